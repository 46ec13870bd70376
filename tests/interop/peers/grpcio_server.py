"""grpcio (grpc.aio) server implementing the interop.Echo contract (see contract.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

LIMIT = 32 << 20


class Echo:
    def __init__(self) -> None:
        self.cancelled = 0
        self.remaining: float | None = None
        self.gathering = 0
        self.most = 0
        self.gathered = asyncio.Event()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        echoed = [(k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-")]
        await context.send_initial_metadata(echoed)
        context.set_trailing_metadata([("trailing-" + k, v) for k, v in echoed])
        return request

    async def server_stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    async def client_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        return b"".join([r async for r in requests])

    async def bidi(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request.upper()

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        code, message = request.split(b"|", 1)
        status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
        await context.abort(status, message.decode())
        raise AssertionError("unreachable")

    async def sleep(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.remaining = context.time_remaining()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b""

    async def ticks(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def gather(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        want = int(request)
        self.gathering += 1
        self.most = max(self.most, self.gathering)
        if self.gathering >= want:
            self.gathered.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gathered.wait(), 5)
        most = self.most
        self.gathering -= 1
        if not self.gathering:
            self.gathered.clear()
            self.most = 0
        return b"%d" % most

    async def stats(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return json.dumps({"cancelled": self.cancelled, "remaining": self.remaining}).encode()

    def handler(self) -> grpc.GenericRpcHandler:
        # No serializers: grpcio hands the handlers raw bytes.
        unary, ustream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            "interop.Echo",
            {
                "Unary": unary(self.unary),
                "ServerStream": ustream(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Fail": unary(self.fail),
                "Sleep": unary(self.sleep),
                "Ticks": ustream(self.ticks),
                "Gather": unary(self.gather),
                "Stats": unary(self.stats),
            },
        )


def _credentials(tls: list[str]) -> grpc.ServerCredentials:
    """`CERT KEY [CLIENT_CA]` files → server credentials (mTLS with a client CA)."""
    cert, key, *ca = (Path(name).read_bytes() for name in tls)
    root = ca[0] if ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=root is not None
    )


async def main() -> None:
    # `--compression gzip|deflate`: compress responses (for clients that accept it).
    # `--tls CERT KEY [CLIENT_CA]`: TLS (mTLS with a client CA) instead of plaintext.
    args = sys.argv[1:]
    compression = None
    tls: list[str] = []
    while args:
        if args[0] == "--compression":
            codes = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}
            compression, args = codes[args[1]], args[2:]
        elif args[0] == "--tls":
            tls, args = args[1:], []
        else:
            raise SystemExit(f"unknown argument {args[0]!r}")
    server = grpc.aio.server(
        compression=compression,
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
        ],
    )
    server.add_generic_rpc_handlers([Echo().handler()])
    if tls:
        port = server.add_secure_port("127.0.0.1:0", _credentials(tls))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(grace=None)


if __name__ == "__main__":
    asyncio.run(main())
