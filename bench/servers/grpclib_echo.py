"""grpclib (asyncio) echo server; `--uvloop` runs it on uvloop."""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.server import Server, Stream

from bench.servers._common import HOST, parse_args


async def serve(port: int) -> None:
    import echo_grpc  # type: ignore[import-not-found]  # generated at bench run time
    import echo_pb2  # type: ignore[import-not-found]

    class Echo(echo_grpc.EchoBase):  # type: ignore[misc]
        async def Unary(self, stream: Stream[Any, Any]) -> None:
            request = await stream.recv_message()
            await stream.send_message(request)

        async def ServerStream(self, stream: Stream[Any, Any]) -> None:
            request = await stream.recv_message()
            message = echo_pb2.EchoMessage(payload=bytes(request.size))
            for _ in range(request.count):
                await stream.send_message(message)

        async def ClientStream(self, stream: Stream[Any, Any]) -> None:
            count = total = 0
            async for message in stream:
                count += 1
                total += len(message.payload)
            await stream.send_message(echo_pb2.StreamSummary(count=count, bytes=total))

    server = Server([Echo()])  # grpclib has no message-size limit; windows default to 4 MiB
    await server.start(HOST, port)
    await server.wait_closed()


def main() -> None:
    args = parse_args(__doc__ or "", uvloop=True)
    if args.uvloop:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        uvloop.run(serve(args.port))
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
