"""prism.grpc echo server (Trio). Raw `bytes` in and out: no protobuf decoding, per
docs/grpc-api.md; defaults for every option but the message-size limit."""

from __future__ import annotations

import trio

from bench.servers._common import HOST, MAX_MESSAGE_BYTES, parse_args
from prism import grpc as pg


class Echo(pg.Service):
    name = "prism.bench.v1.Echo"

    @pg.unary_unary("Unary", bytes, bytes)
    async def unary(self, request: bytes, call: pg.ServerCall) -> bytes:
        return request


async def serve(port: int) -> None:
    server = pg.Server(
        [Echo()], options=pg.ServerOptions(max_receive_message_size=MAX_MESSAGE_BYTES)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_tcp, HOST, port)


def main() -> None:
    trio.run(serve, parse_args(__doc__ or "", stubs=False).port)


if __name__ == "__main__":
    main()
