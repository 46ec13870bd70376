"""ServerCall's message path: batched writes that still respect flow control and fairness."""

from __future__ import annotations

from collections.abc import Callable

import h2.events
import trio
from grpc_testkit import Echo, RawClient, serving

from prism import grpc as pg

MESSAGE = b"m" * 1024
FRAMED = 5 + len(MESSAGE)


class Flood(pg.Service):
    """Sends 1 KiB messages for as long as the client lets it."""

    name = "test.Flood"

    def __init__(self) -> None:
        self.sent = 0

    @pg.unary_stream("Flood", bytes, bytes)
    async def flood(self, request: bytes, call: pg.ServerCall) -> None:
        while True:
            await call.send_message(MESSAGE)
            self.sent += 1


def data_received(client: RawClient, sid: int) -> int:
    return sum(len(e.data) for e in client.of(h2.events.DataReceived, sid))


async def until_stable(read: Callable[[], int], probe: float = 0.05) -> None:
    """Wait until ``read()`` stops changing (the producer is parked)."""
    with trio.fail_after(20):
        before = -1
        while (now := read()) != before:
            before = now
            await trio.sleep(probe)


async def test_server_call_batched_sends_never_overrun_the_peer_window() -> None:
    # The raw client acknowledges nothing: the server may send exactly one window (65,535
    # bytes, the HTTP/2 default) and must then park the handler. h2 on the client side would
    # raise a FlowControlError on a single byte more.
    service = Flood()
    window = 64 << 10
    options = pg.ServerOptions(initial_window_size=window)
    async with serving(service, options=options) as (_, target), RawClient.connect(target) as c:
        sid = await c.call("/test.Flood/Flood", b"")
        with trio.fail_after(10):
            await c.until(lambda: data_received(c, sid) >= 65535)
        await until_stable(lambda: service.sent)
        assert data_received(c, sid) == 65535
        # What the handler got past send_message: the window in flight, plus at most the
        # server's own queue (one initial_window_size) and one batch.
        assert service.sent * FRAMED <= 65535 + window + 64 * FRAMED

        # Opening the window lets exactly that much more through.
        c.h2.acknowledge_received_data(65535, sid)
        await c.flush()
        with trio.fail_after(10):
            await c.until(lambda: data_received(c, sid) >= 2 * 65535)
        await until_stable(lambda: service.sent)
        assert data_received(c, sid) == 2 * 65535


async def test_server_call_slow_reader_bounds_what_the_server_produces() -> None:
    # A prism client that stops reading: everything in flight (its buffers, the windows, the
    # server's queue) is bounded, however long the stream would be.
    service = Flood()
    async with (
        serving(service) as (_, target),
        pg.open_channel(target) as channel,
        channel.unary_stream("/test.Flood/Flood", b"", bytes) as call,
    ):
        for _ in range(10):
            assert await call.receive_message() == MESSAGE
        await until_stable(lambda: service.sent)
        # Client stream window (1 MiB) + what the client holds unacknowledged (1 MiB) +
        # the server's queue (1 MiB), and one batch: not a runaway producer.
        assert service.sent * FRAMED <= 3 * (1 << 20) + 64 * FRAMED
        parked = service.sent
        # Reading again lets the stream go on, in order and intact.
        for _ in range(parked + 100):
            assert await call.receive_message() == MESSAGE


async def test_server_call_a_flooding_stream_does_not_starve_other_calls() -> None:
    service = Flood()
    async with (
        serving(service, Echo()) as (_, target),
        pg.open_channel(target) as streaming,
        pg.open_channel(target) as other,
        trio.open_nursery() as nursery,
    ):

        async def drain() -> None:
            async for _message in streaming.unary_stream("/test.Flood/Flood", b"", bytes):
                pass

        nursery.start_soon(drain)
        with trio.fail_after(10):
            while service.sent < 1000:  # noqa: ASYNC110 (the flood is under way)
                await trio.sleep(0.01)
            for i in range(20):
                assert await other.unary_unary("/test.Echo/Unary", b"%d" % i, bytes) == b"%d" % i
        nursery.cancel_scope.cancel()
