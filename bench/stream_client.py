"""One gRPC stream from grpcio's (sync) client, timed: the peer of the streaming scenarios.

`python -m bench.stream_client HOST:PORT server|client COUNT SIZE` opens one
`prism.bench.v1.Echo/ServerStream` call (the server sends COUNT messages of SIZE payload
bytes) or one `ClientStream` call (this client sends them), checks that every message arrived,
and prints one JSON line: `{"messages": ..., "bytes": ..., "elapsed_s": ...}`. Messages are
raw bytes on the client side (no protobuf decoding), built once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import grpc

SERVICE = "prism.bench.v1.Echo"
LIMIT = 64 << 20


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def read_varints(data: bytes) -> dict[int, int]:
    """Top-level varint fields of a small message (StreamSummary)."""
    fields, pos = {}, 0
    while pos < len(data):
        key = data[pos]
        pos += 1
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields[key >> 3] = value
    return fields


def main() -> None:
    target, mode, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    options = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        if mode == "server":
            request = b"\x08" + varint(count) + b"\x10" + varint(size)
            stream = channel.unary_stream(f"/{SERVICE}/ServerStream")
            start = time.perf_counter()
            sizes = [len(message) for message in stream(request, timeout=600)]
            elapsed = time.perf_counter() - start
            # EchoMessage payload bytes: the message less its 1-byte tag and length varint.
            received, total = len(sizes), sum(sizes) - len(sizes) * (1 + len(varint(size)))
        elif mode == "client":
            message = b"\x0a" + varint(size) + bytes(size)

            def requests() -> Iterator[bytes]:
                for _ in range(count):
                    yield message

            upload = channel.stream_unary(f"/{SERVICE}/ClientStream")
            start = time.perf_counter()
            summary = read_varints(upload(requests(), timeout=600))
            elapsed = time.perf_counter() - start
            received, total = summary.get(1, 0), summary.get(2, 0)
        else:
            raise SystemExit(f"mode must be server or client, not {mode!r}")
    if received != count or total != count * size:
        raise SystemExit(
            f"{mode} stream: {received} messages ({total} payload bytes) arrived, "
            f"not {count} ({count * size})"
        )
    print(json.dumps({"messages": received, "bytes": total, "elapsed_s": elapsed}))


if __name__ == "__main__":
    main()
