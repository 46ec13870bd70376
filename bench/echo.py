"""The echo service of bench/protos/echo.proto: stubs, request bodies and a checked call."""

from __future__ import annotations

import gzip
import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.errors import BenchError

PROTO_DIR = Path(__file__).resolve().parent / "protos"
PROTO = "echo.proto"
SERVICE = "prism.bench.v1.Echo"
METHOD = f"/{SERVICE}/Unary"
#: Payload bytes of the compressed unary scenario (text-like: it compresses ~5x).
GZIP_PAYLOAD = 1024
#: Payload bytes of each message in the streaming scenarios.
STREAM_MESSAGE = 1024
#: Headers of a gzip-compressed request that accepts a gzip-compressed response.
GZIP_HEADERS = ("grpc-encoding: gzip", "grpc-accept-encoding: gzip")


def generate_stubs(out: Path) -> None:
    """grpcio (`echo_pb2`, `echo_pb2_grpc`) and grpclib (`echo_grpc`) modules into `out`."""
    plugin = shutil.which("protoc-gen-grpclib_python") or str(
        Path(sys.executable).parent / "protoc-gen-grpclib_python"
    )
    if not Path(plugin).exists():
        raise BenchError("protoc-gen-grpclib_python not found: is grpclib installed?")
    command = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
        f"--python_out={out}", f"--grpc_python_out={out}", f"--grpclib_python_out={out}",
        f"--plugin=protoc-gen-grpclib_python={plugin}",
        PROTO,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"protoc failed: {' '.join(command)}\n{proc.stdout}{proc.stderr}")


def payload(size: int) -> bytes:
    pattern = bytes(range(256))
    return (pattern * (size // len(pattern) + 1))[:size]


def text_payload(size: int) -> bytes:
    """Compressible like a JSON document: repeated keys, varying numbers."""
    rows = b"".join(
        b'{"id": %d, "name": "item-%d", "ok": true}, ' % (i, i * 7) for i in range(size)
    )
    return rows[:size]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_message(data: bytes) -> bytes:
    """EchoMessage{payload = data} in protobuf wire format (field 1, length-delimited)."""
    return b"\x0a" + _varint(len(data)) + data if data else b""


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def write_body(path: Path, payload_size: int) -> Path:
    path.write_bytes(grpc_frame(encode_message(payload(payload_size))))
    return path


def write_gzip_body(path: Path, payload_size: int) -> Path:
    """The compressed scenario's request: the compressed flag, then the message in gzip."""
    packed = gzip.compress(encode_message(text_payload(payload_size)), mtime=0)
    path.write_bytes(b"\x01" + len(packed).to_bytes(4, "big") + packed)
    return path


def check_echo(
    stubs: Path, host: str, port: int, payload_size: int, *, compressed: bool = False
) -> None:
    """One real gRPC call with grpcio's client: OK status and the payload echoed back.

    h2load cannot see `grpc-status` (it lives in the trailers), so this is what shows that a
    server answers the benchmark's method with OK. It also checks our hand-encoded body.
    """
    import grpc

    if str(stubs) not in sys.path:
        sys.path.insert(0, str(stubs))
    pb2: Any = importlib.import_module("echo_pb2")
    pb2_grpc: Any = importlib.import_module("echo_pb2_grpc")
    data = text_payload(payload_size) if compressed else payload(payload_size)
    if pb2.EchoMessage(payload=data).SerializeToString() != encode_message(data):
        raise BenchError("the hand-encoded EchoMessage differs from protobuf's encoding")
    limit = 64 << 20
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    compression = grpc.Compression.Gzip if compressed else None
    with grpc.insecure_channel(
        f"{host}:{port}", options=options, compression=compression
    ) as channel:
        try:
            reply = pb2_grpc.EchoStub(channel).Unary(pb2.EchoMessage(payload=data), timeout=60)
        except grpc.RpcError as exc:
            raise BenchError(f"{METHOD} on {host}:{port} failed: {exc}") from exc
    if reply.payload != data:
        raise BenchError(
            f"{METHOD} on {host}:{port} echoed {len(reply.payload)} bytes, "
            f"not the {payload_size} sent"
        )
