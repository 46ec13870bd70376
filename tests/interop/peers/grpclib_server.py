"""grpclib (asyncio) server implementing the interop.Echo contract (see contract.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream


class BytesCodec(CodecBase):
    """Messages are raw bytes: no protobuf at all."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


class Echo:
    def __init__(self) -> None:
        self.cancelled = 0
        self.remaining: float | None = None
        self.gathering = 0
        self.most = 0
        self.gathered = asyncio.Event()

    async def unary(self, stream: Stream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        echoed = [(k, v) for k, v in stream.metadata.items() if k.startswith("x-")]
        await stream.send_initial_metadata(metadata=echoed)
        await stream.send_message(request)
        await stream.send_trailing_metadata(metadata=[("trailing-" + k, v) for k, v in echoed])

    async def server_stream(self, stream: Stream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        for i in range(int(request)):
            await stream.send_message(b"%d" % i)

    async def client_stream(self, stream: Stream[bytes, bytes]) -> None:
        parts = [message async for message in stream]
        await stream.send_message(b"".join(parts))

    async def bidi(self, stream: Stream[bytes, bytes]) -> None:
        async for message in stream:
            await stream.send_message(message.upper())

    async def fail(self, stream: Stream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        code, message = request.split(b"|", 1)
        raise GRPCError(Status(int(code)), message.decode())

    async def sleep(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        self.remaining = stream.deadline.time_remaining() if stream.deadline else None
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await stream.send_message(b"")

    async def ticks(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        try:
            while True:
                await stream.send_message(b"tick")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def gather(self, stream: Stream[bytes, bytes]) -> None:
        want = int(await stream.recv_message())
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
        await stream.send_message(b"%d" % most)

    async def stats(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        body = {"cancelled": self.cancelled, "remaining": self.remaining}
        await stream.send_message(json.dumps(body).encode())

    def __mapping__(self) -> dict[str, Handler]:
        c = Cardinality
        table = {
            "Unary": (self.unary, c.UNARY_UNARY),
            "ServerStream": (self.server_stream, c.UNARY_STREAM),
            "ClientStream": (self.client_stream, c.STREAM_UNARY),
            "Bidi": (self.bidi, c.STREAM_STREAM),
            "Fail": (self.fail, c.UNARY_UNARY),
            "Sleep": (self.sleep, c.UNARY_UNARY),
            "Ticks": (self.ticks, c.UNARY_STREAM),
            "Gather": (self.gather, c.UNARY_UNARY),
            "Stats": (self.stats, c.UNARY_UNARY),
        }
        return {
            f"/interop.Echo/{name}": Handler(func, card, bytes, bytes)
            for name, (func, card) in table.items()
        }


async def main() -> None:
    server = Server([Echo()], codec=BytesCodec())
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    # Run until the test closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
