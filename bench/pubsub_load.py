"""The `pubsub` suite's load: one publisher, and subscribers in a process of their own.

- `Publisher`: grpcio's sync stub on one channel, in the runner's process. Each payload starts
  with the publisher's monotonic clock (ns) and the message's index, so subscribers can time
  deliveries and tell measured messages from warm-up ones.
- `GrpcioSubscribers`: `bench.pubsub_client`, grpcio asyncio, in its own process (see there).
  A real gRPC client that reads and checks every message; it needs about as much CPU per
  delivery as the proxy, so on a small machine it is the first bottleneck.
- `H2loadSubscribers`: h2load (nghttp2's C load generator) holding the subscriptions open: it
  speaks HTTP/2, not gRPC, and costs next to nothing per message, so the proxy gets the
  machine. It counts DATA bytes only: deliveries are what arrived of the bytes every stream
  should have received, and streams that ended before the end are the disconnected ones
  (h2load opens a new stream for each: a client that subscribes again).
"""

from __future__ import annotations

import json
import math
import resource
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import h2load
from bench.errors import BenchError
from bench.procs import ROOT

TOPIC = "bench"
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"
#: How long h2load's streams get to open before publishing starts.
H2LOAD_SETTLE_S = 3.0


class Publisher:
    """Publishes on TOPIC through the proxy with grpcio's sync stub (one channel)."""

    def __init__(self, address: str, namespace: str, payload_size: int) -> None:
        import grpc

        if payload_size < 16:
            raise BenchError("--payload-size must be at least 16 (clock and index)")
        self._grpc = grpc
        self._channel = grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)])
        self._call = self._channel.unary_unary(EXECUTE)
        self._filler = b"x" * (payload_size - 16)
        self._namespace = namespace

    def publish(self, index: int) -> tuple[int, int]:
        """(latency ns, sequence number) of one publish; the payload carries the clock and
        `index` (negative: a warm-up message)."""
        from prism._proto.prism.data.v1 import PublishRequest, PublishResponse
        from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
        from prism.sdk.typed import pack, unpack

        start = time.monotonic_ns()
        payload = start.to_bytes(8, "little") + index.to_bytes(8, "little", signed=True)
        request = ExecuteRequest(
            namespace=self._namespace,
            operation="publish",
            typed_params=pack(PublishRequest(topic=TOPIC, payload=payload + self._filler)),
        )
        try:
            raw = self._call(bytes(request))
        except self._grpc.RpcError as exc:
            raise BenchError(f"publish failed: {exc}") from exc
        latency = time.monotonic_ns() - start
        return latency, unpack(ExecuteResponse.parse(raw).typed_result, PublishResponse).sequence

    def close(self) -> None:
        self._channel.close()


@dataclass
class Delivered:
    """What the subscribers saw of the measured messages."""

    deliveries: int
    expected: int
    disconnected: int
    client_cpu_s: float
    ended: dict[str, int] = field(default_factory=dict)
    delivery_p50_ms: float | None = None
    delivery_p99_ms: float | None = None
    #: Deliveries in the slowest whole second (grpcio subscribers only).
    slowest_second: int | None = None


def subscribe_request(namespace: str) -> bytes:
    from prism._proto.prism.data.v1 import SubscribeRequest
    from prism._proto.prism.proxy.v1 import StreamRequest
    from prism.sdk.typed import pack

    request = StreamRequest(
        namespace=namespace, operation="subscribe", typed_params=pack(SubscribeRequest(topic=TOPIC))
    )
    return bytes(request)


class GrpcioSubscribers:
    name = "grpcio asyncio (bench.pubsub_client), own process"

    def __init__(self, plan: dict[str, Any], log_path: Path) -> None:
        self._plan = plan
        self._log = log_path.open("w")
        self._proc: subprocess.Popen[str] | None = None

    def start(self, publisher: Publisher) -> None:
        """Open the streams; publish warm-up messages (every 20 ms) until each has one."""
        self._proc = proc = subprocess.Popen(
            [sys.executable, "-m", "bench.pubsub_client"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT,
        )  # fmt: skip
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(self._plan) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise BenchError(f"the subscriber process exited: see {self._log.name}")
                publisher.publish(-1)
                if sel.select(0.02):
                    line = proc.stdout.readline()
                    if line.strip() == "ready":
                        return
                    raise BenchError(f"unexpected output from the subscriber process: {line!r}")
        raise BenchError("the subscribers were not all subscribed within 120 s")

    def finish(self, sequences: list[int], payload_size: int) -> Delivered:
        """Tell the subscribers the last measured message; their results once it is in."""
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps({"last": len(sequences) - 1}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise BenchError(f"the subscriber process failed: see {self._log.name}")
        result = json.loads(line)
        seconds = result["per_second"]
        whole = seconds[1:-1] if len(seconds) > 2 else seconds
        return Delivered(
            deliveries=sum(result["received"]),
            expected=len(sequences) * result["subscribers"],
            disconnected=result["disconnected"],
            client_cpu_s=result["client_cpu_s"],
            ended=result["ended"],
            delivery_p50_ms=result["latency_p50_ms"],
            delivery_p99_ms=result["latency_p99_ms"],
            slowest_second=min(whole) if whole else 0,
        )

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        self._log.close()


def frame_size(sequence: int, payload_size: int) -> int:
    """Bytes of one delivery on the wire as h2load counts them (gRPC prefix + StreamResponse)."""
    from prism._proto.prism.data.v1 import Message
    from prism.sdk import _envelope

    message = Message(topic=TOPIC, payload=b"x" * payload_size, sequence=sequence)
    return 5 + len(_envelope.stream_result(message))


class H2loadSubscribers:
    name = "h2load (nghttp2, C), own process: HTTP/2 only, DATA bytes counted"

    def __init__(self, plan: dict[str, Any], log_path: Path, duration_s: float) -> None:
        self._plan = plan
        self._log_path = log_path
        self._h2load = h2load.find_h2load()
        self._streams_per_connection = math.ceil(plan["subscribers"] / plan["channels"])
        self.streams = self._streams_per_connection * plan["channels"]
        # Room for publishing to run late (it is closed-loop) and for the last deliveries.
        self._duration = H2LOAD_SETTLE_S + 8 * duration_s + 15
        self._proc: subprocess.Popen[str] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="prism-bench-h2load-")
        self._started = 0.0

    def start(self, publisher: Publisher) -> None:
        body = Path(self._tmp.name) / "subscribe.bin"
        request = subscribe_request(self._plan["namespace"])
        body.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)
        load = h2load.Load(
            clients=self._plan["channels"],
            streams=self._streams_per_connection,
            duration_s=self._duration,
        )
        command = [self._h2load, *load.argv(), "-d", str(body)]
        for header in h2load.GRPC_HEADERS:
            command += ["-H", header]
        command.append(f"http://{self._plan['address']}{EXECUTE_STREAM}")
        self.command = command
        self._usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._started = time.monotonic()
        time.sleep(H2LOAD_SETTLE_S)  # no warm-up messages: h2load could not tell them apart
        if self._proc.poll() is not None:
            raise BenchError(f"h2load exited at once: {' '.join(command)}")

    def finish(self, sequences: list[int], payload_size: int) -> Delivered:
        proc = self._proc
        assert proc is not None
        if time.monotonic() - self._started > self._duration - 5:
            raise BenchError("publishing took longer than h2load's run: lower --rate")
        output, _ = proc.communicate(timeout=self._duration + 120)
        self._log_path.write_text(" ".join(self.command) + "\n" + output)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (usage.ru_utime - self._usage0.ru_utime) + (usage.ru_stime - self._usage0.ru_stime)
        report = h2load.parse_report(output, self.command, cpu)
        per_stream = sum(frame_size(s, payload_size) for s in sequences)
        share = report.data_bytes / (per_stream * self.streams)
        expected = len(sequences) * self.streams
        return Delivered(
            deliveries=round(share * expected),
            expected=expected,
            disconnected=report.done,
            client_cpu_s=cpu,
            ended={"ended (h2load done)": report.done} if report.done else {},
        )

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._tmp.cleanup()
