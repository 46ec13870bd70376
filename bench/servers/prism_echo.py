"""prism.grpc echo server (Trio). Raw `bytes` in and out: no protobuf decoding, per
docs/grpc-api.md; defaults for every option but the message-size limit (and, with
`--compression`, response compression; with ``--no-flood-limits``, the flood budgets and
keepalive policy: off; with ``--interceptor``, one interceptor that does nothing)."""

from __future__ import annotations

import argparse
import dataclasses

import trio

from bench.servers._common import HOST, MAX_MESSAGE_BYTES
from prism import grpc as pg
from prism import protowire


class Echo(pg.Service):
    name = "prism.bench.v1.Echo"

    @pg.unary_unary("Unary", bytes, bytes)
    async def unary(self, request: bytes, call: pg.ServerCall) -> bytes:
        return request

    @pg.unary_stream("ServerStream", bytes, bytes)
    async def server_stream(self, request: bytes, call: pg.ServerCall) -> None:
        fields = protowire.scan(request, frozenset({1, 2}))
        count, size = int(fields.get(1, 0)), int(fields.get(2, 0))
        # EchoMessage{payload}, encoded once: the stream's cost, not protobuf's, is measured.
        message = protowire.length_delimited(1, bytes(size)) if size else b""
        for _ in range(count):
            await call.send_message(message)

    @pg.stream_unary("ClientStream", bytes, bytes)
    async def client_stream(self, call: pg.ServerCall) -> bytes:
        count = total = 0
        async for message in call:
            count += 1
            total += _payload_length(message)
        return protowire.varint_field(1, count) + protowire.varint_field(2, total)


def _payload_length(message: bytes) -> int:
    """EchoMessage's payload length, from its header (tag 0x0a, varint length): as cheap as
    the raw-bytes handler should be, but the same count the protobuf servers report."""
    if not message:
        return 0
    value = shift = 0
    for byte in message[1:11]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise ValueError("malformed EchoMessage")


class Noop(pg.ServerInterceptor):
    """An interceptor that does nothing: what installing one costs (the grpc suite)."""

    async def before(self, call: pg.ServerCall) -> None:
        pass

    def after(self, call: pg.ServerCall, outcome: pg.CallOutcome) -> None:
        pass


async def serve(
    port: int, compression: str | None, no_flood_limits: bool = False, interceptor: bool = False
) -> None:
    # Only set when asked: `--prism-before` runs this module on a prism without the option.
    extra = {"compression": compression} if compression else {}
    options = pg.ServerOptions(max_receive_message_size=MAX_MESSAGE_BYTES, **extra)
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
    # Only passed when asked, for the same reason.
    intercept = {"interceptors": [Noop()]} if interceptor else {}
    server = pg.Server([Echo()], options=options, **intercept)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_tcp, HOST, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--compression", choices=["gzip", "deflate"])
    parser.add_argument("--no-flood-limits", action="store_true")
    parser.add_argument("--interceptor", action="store_true")
    args = parser.parse_args()
    trio.run(serve, args.port, args.compression, args.no_flood_limits, args.interceptor)


if __name__ == "__main__":
    main()
