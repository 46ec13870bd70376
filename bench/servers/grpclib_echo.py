"""grpclib (asyncio) echo server; `--uvloop` runs it on uvloop."""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.server import Server, Stream

from bench.servers._common import HOST, parse_args


async def serve(port: int) -> None:
    import echo_grpc  # type: ignore[import-not-found]  # generated at bench run time

    class Echo(echo_grpc.EchoBase):  # type: ignore[misc]
        async def Unary(self, stream: Stream[Any, Any]) -> None:
            request = await stream.recv_message()
            await stream.send_message(request)

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
