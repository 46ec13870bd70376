"""prism.grpc echo server (Trio). Raw `bytes` in and out: no protobuf decoding, per
docs/grpc-api.md; defaults for every option but the message-size limit (and, with
``--no-flood-limits``, the flood budgets and keepalive policy: off; with ``--interceptor``,
one interceptor that does nothing)."""

from __future__ import annotations

import dataclasses
import sys

import trio

from bench.servers._common import HOST, MAX_MESSAGE_BYTES, parse_args
from prism import grpc as pg


class Echo(pg.Service):
    name = "prism.bench.v1.Echo"

    @pg.unary_unary("Unary", bytes, bytes)
    async def unary(self, request: bytes, call: pg.ServerCall) -> bytes:
        return request


class Noop(pg.ServerInterceptor):
    """An interceptor that does nothing: what installing one costs (the grpc suite)."""

    async def before(self, call: pg.ServerCall) -> None:
        pass

    def after(self, call: pg.ServerCall, outcome: pg.CallOutcome) -> None:
        pass


async def serve(port: int, no_flood_limits: bool = False, interceptor: bool = False) -> None:
    options = pg.ServerOptions(max_receive_message_size=MAX_MESSAGE_BYTES)
    if no_flood_limits:  # the abuse suite's "what does a reset stream cost" run
        big = 1 << 40
        options = dataclasses.replace(
            options,
            max_resets_per_window=big,
            max_pings_per_window=big,
            max_settings_per_window=big,
            keepalive_min_time=0,
            keepalive_permit_without_stream=True,
        )
    server = pg.Server([Echo()], options=options, interceptors=[Noop()] if interceptor else [])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_tcp, HOST, port)


def main() -> None:
    flags = {f: f in sys.argv for f in ("--no-flood-limits", "--interceptor")}
    sys.argv = [a for a in sys.argv if a not in flags]
    port = parse_args(__doc__ or "", stubs=False).port
    trio.run(serve, port, flags["--no-flood-limits"], flags["--interceptor"])


if __name__ == "__main__":
    main()
