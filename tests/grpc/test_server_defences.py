"""prism.grpc's server under attack: each defence attacked over real TCP by a raw HTTP/2 peer.

The attacker (grpc_testkit.Attacker) writes frames by hand with hyperframe and hpack; the
server is a real listening prism server. Afterwards a well-behaved client must still be served.
"""

from __future__ import annotations

import h2.errors
import h2.events
import hyperframe.frame
import pytest
import trio
import trio.testing
from grpc_testkit import PREFACE, Attacker, Echo, RawClient, serving

from prism import grpc as pg

CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
HOLD = "/test.Counting/Hold"
GOAWAY = h2.events.ConnectionTerminated


class Counting(pg.Service):
    """Counts the handlers that ran; ``Hold`` blocks until released."""

    name = "test.Counting"

    def __init__(self) -> None:
        self.ran = 0
        self.release = trio.Event()
        self.cancelled = 0

    @pg.unary_unary("Hold", bytes, bytes)
    async def hold(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.ran += 1
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return request


async def _still_serves(target: str) -> None:
    async with pg.open_channel(target) as channel:
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


# -- rapid reset (CVE-2023-44487) ---------------------------------------------------------------


async def test_server_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    options = pg.ServerOptions(max_resets_per_window=100, flood_window=60)
    service = Counting()
    async with serving(service, Echo(), options=options) as (server, target):
        async with Attacker.connect(target) as attacker:
            pairs = []
            for sid in range(1, 2 * 400, 2):
                pairs += [attacker.headers(sid, HOLD), attacker.reset(sid)]
            await attacker.send(*pairs)
            with trio.fail_after(30):
                goaway = await attacker.goaway()
                await attacker.closed()
        assert goaway.error_code == CALM
        assert goaway.additional_data == b"too_many_resets"
        assert server.counters.too_many_resets == 1
        await _still_serves(target)
    # Every stream was reset in the read that opened it: no handler ever ran for one.
    assert service.ran == 0


async def test_server_stream_reset_in_the_read_that_opened_it_starts_no_handler() -> None:
    service = Counting()
    async with serving(service, Echo()) as (server, target):
        async with Attacker.connect(target) as attacker:
            frames: list[hyperframe.frame.Frame] = []
            for sid in range(1, 101, 2):
                frames += [attacker.headers(sid, HOLD), attacker.reset(sid)]
            # Then an ordinary call on the same connection, in the same write.
            frames.append(attacker.headers(101, end_stream=True))
            await attacker.send(*frames)
            with trio.fail_after(30):
                trailers = await attacker.read_until(
                    lambda f: f.stream_id == 101 and "END_STREAM" in f.flags
                )
        assert trailers is not None
        assert service.ran == 0
        assert server.counters.too_many_resets == 0  # 50 resets: within the default budget


async def test_server_refused_streams_count_as_resets() -> None:
    # A client that opens streams past MAX_CONCURRENT_STREAMS gets each refused
    # (REFUSED_STREAM); refusing is work too, so refusals spend the same budget.
    options = pg.ServerOptions(max_concurrent_streams=2, max_resets_per_window=50, flood_window=60)
    service = Counting()
    async with serving(service, Echo(), options=options) as (server, target):
        assert server.counters.too_many_resets == 0
        async with Attacker.connect(target) as attacker:
            await attacker.send(*attacker.request(1, HOLD), *attacker.request(3, HOLD))
            with trio.fail_after(30):
                while service.ran < 2:  # noqa: ASYNC110 (handlers start in the server's tasks)
                    await trio.sleep(0.01)
                await attacker.send(*[attacker.headers(sid, HOLD) for sid in range(5, 400, 2)])
                goaway = await attacker.goaway()
        refused = [
            f
            for f in attacker.of(hyperframe.frame.RstStreamFrame)
            if f.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        ]
        assert goaway.error_code == CALM
        assert goaway.additional_data == b"too_many_resets"
        assert len(refused) <= 51  # those answered before the budget ran out
        assert service.ran == 2
        await _still_serves(target)


# -- ping and SETTINGS floods, keepalive enforcement --------------------------------------------


def _ping(n: int) -> hyperframe.frame.PingFrame:
    return hyperframe.frame.PingFrame(0, opaque_data=n.to_bytes(8, "big"))


async def test_server_pings_without_calls_violate_the_keepalive_policy() -> None:
    # grpc-go's EnforcementPolicy defaults: no pings without an RPC open, at most 2 strikes.
    async with serving(Echo()) as (server, target), Attacker.connect(target) as attacker:
        await attacker.send(*[_ping(n) for n in range(10)])
        with trio.fail_after(30):
            goaway = await attacker.goaway()
            await attacker.closed()
    assert (goaway.error_code, goaway.additional_data) == (CALM, b"too_many_pings")
    assert server.counters.too_many_pings == 1


async def test_server_pings_within_the_keepalive_policy_are_answered() -> None:
    options = pg.ServerOptions(keepalive_min_time=0, keepalive_permit_without_stream=True)
    async with serving(Echo(), options=options) as (server, target):
        async with Attacker.connect(target) as attacker:
            await attacker.send(*[_ping(n) for n in range(20)])
            await attacker.send(attacker.headers(1, end_stream=True))
            with trio.fail_after(30):
                await attacker.read_until(lambda f: f.stream_id == 1 and "END_STREAM" in f.flags)
            acks = [f for f in attacker.of(hyperframe.frame.PingFrame) if "ACK" in f.flags]
            assert len(acks) == 20
            assert not attacker.of(hyperframe.frame.GoAwayFrame)
        assert server.counters.too_many_pings == 0


async def test_server_ping_flood_over_the_budget_gets_goaway() -> None:
    # Even where the keepalive policy allows any ping, the budget per window holds.
    options = pg.ServerOptions(
        keepalive_min_time=0,
        keepalive_permit_without_stream=True,
        max_pings_per_window=50,
        flood_window=60,
    )
    async with serving(Echo(), options=options) as (server, target):
        async with Attacker.connect(target) as attacker:
            await attacker.send(*[_ping(n) for n in range(1000)])
            with trio.fail_after(30):
                goaway = await attacker.goaway()
                await attacker.closed()
        assert (goaway.error_code, goaway.additional_data) == (CALM, b"too_many_pings")
        acks = [f for f in attacker.of(hyperframe.frame.PingFrame) if "ACK" in f.flags]
        assert len(acks) <= 51
        assert server.counters.too_many_pings == 1
        await _still_serves(target)


async def test_server_settings_flood_gets_goaway() -> None:
    options = pg.ServerOptions(max_settings_per_window=20, flood_window=60)
    async with serving(Echo(), options=options) as (server, target):
        async with Attacker.connect(target) as attacker:
            await attacker.send(*[hyperframe.frame.SettingsFrame(0) for _ in range(500)])
            with trio.fail_after(30):
                goaway = await attacker.goaway()
                await attacker.closed()
        assert (goaway.error_code, goaway.additional_data) == (CALM, b"too_many_settings")
        assert server.counters.too_many_settings == 1
        await _still_serves(target)


# -- HPACK ----------------------------------------------------------------------------------------


async def test_server_undecodable_header_block_is_compression_error() -> None:
    async with serving(Echo()) as (server, target), Attacker.connect(target) as attacker:
        # An indexed field naming dynamic-table entry 200 of an empty table.
        bad = hyperframe.frame.HeadersFrame(1, b"\xff\x49", flags=["END_HEADERS"])
        await attacker.send(bad)
        with trio.fail_after(30):
            goaway = await attacker.goaway()
            await attacker.closed()
        assert goaway.error_code == h2.errors.ErrorCodes.COMPRESSION_ERROR
        assert server.counters.protocol_errors == 1
        await _still_serves(target)


async def test_server_header_list_over_the_limit_gets_goaway_enhance_your_calm() -> None:
    options = pg.ServerOptions(max_header_list_size=4096)
    async with (
        serving(Echo(), options=options) as (server, target),
        Attacker.connect(target) as attacker,
    ):
        block = attacker.encoder.encode([(b":path", b"/test.Echo/Unary"), (b"x-big", b"b" * 8000)])
        await attacker.send(hyperframe.frame.HeadersFrame(1, block, flags=["END_HEADERS"]))
        with trio.fail_after(30):
            goaway = await attacker.goaway()
            await attacker.closed()
        assert goaway.error_code == CALM
        assert server.counters.protocol_errors == 1
        await _still_serves(target)


# -- handshake timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", PREFACE[:10], PREFACE])
async def test_server_drops_connections_that_do_not_finish_the_handshake(
    autojump_clock: trio.testing.MockClock, sent: bytes
) -> None:
    # Nothing, half a preface, or a preface without the SETTINGS frame that must follow it.
    options = pg.ServerOptions(handshake_timeout=5)
    async with serving(Echo(), options=options) as (server, target):
        async with Attacker.connect(target, greet=False) as attacker:
            if sent:
                await attacker.send(sent)
            with trio.fail_after(60):
                await attacker.closed()
            assert not attacker.of(hyperframe.frame.GoAwayFrame)
        assert server.counters.handshake_timeouts == 1
        assert server.open_connections == 0


async def test_server_closes_connections_that_never_acknowledge_its_settings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Preface and SETTINGS, then silence: our SETTINGS are never acknowledged.
    options = pg.ServerOptions(handshake_timeout=5)
    async with serving(Echo(), options=options) as (server, target):
        async with Attacker.connect(target, greet=False) as attacker:
            await attacker.send(PREFACE, hyperframe.frame.SettingsFrame(0))
            with trio.fail_after(60):
                goaway = await attacker.goaway()
                await attacker.closed()
        assert goaway.error_code == h2.errors.ErrorCodes.SETTINGS_TIMEOUT
        assert server.counters.handshake_timeouts == 1


async def test_server_handshake_timeout_spares_connections_that_greeted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = pg.ServerOptions(handshake_timeout=5)
    async with serving(Echo(), options=options) as (server, target):
        async with Attacker.connect(target) as attacker:
            await trio.sleep(60)
            await attacker.send(attacker.headers(1, end_stream=True))
            with trio.fail_after(60):
                done = await attacker.read_until(
                    lambda f: f.stream_id == 1 and "END_STREAM" in f.flags
                )
            assert done is not None
        assert server.counters.handshake_timeouts == 0


# -- connection idle time and age ---------------------------------------------------------------


async def test_server_max_connection_idle_sends_graceful_goaway(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = pg.ServerOptions(max_connection_idle=30)
    async with serving(Echo(), options=options) as (server, target):
        async with RawClient.connect(target) as client:
            start = trio.current_time()
            sid = await client.call("/test.Echo/Unary", b"x")
            await client.until(lambda: client.ended(sid))
            with trio.fail_after(120):
                while not client.closed:
                    await client.receive()
        goaway = client.of(GOAWAY)[0]  # the graceful one (the final GOAWAY follows)
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert goaway.additional_data == b"max_idle"
        assert trio.current_time() - start >= 30  # virtual time: the idle limit, not earlier
        assert server.counters.idle_closed == 1


async def test_server_max_connection_idle_spares_connections_with_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = pg.ServerOptions(max_connection_idle=30)
    service = Counting()
    async with serving(service, options=options) as (server, target):
        async with RawClient.connect(target) as client:
            sid = await client.call("/test.Counting/Hold", b"held")
            await client.receive()  # the server's SETTINGS: acknowledged
            await trio.sleep(300)  # ten idle limits, with a call open throughout
            assert not client.of(GOAWAY)
            service.release.set()
            with trio.fail_after(60):
                await client.until(lambda: client.ended(sid))
            assert client.trailers(sid)[b"grpc-status"] == b"0"
        assert server.counters.idle_closed == 0


async def test_server_max_connection_age_drains_then_cancels_after_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = pg.ServerOptions(max_connection_age=100, max_connection_age_grace=10)
    service = Counting()
    async with serving(service, options=options) as (server, target):
        async with RawClient.connect(target) as client:
            start = trio.current_time()
            sid = await client.call("/test.Counting/Hold", b"held")
            with trio.fail_after(300):
                await client.until(lambda: bool(client.of(GOAWAY)))
                drained = trio.current_time() - start
                await client.until(lambda: client.ended(sid))
        [goaway, *_] = client.of(GOAWAY)
        assert goaway.additional_data == b"max_age"
        assert goaway.last_stream_id == sid  # the open call may finish...
        assert 90 <= drained <= 110  # max_connection_age, ±10% jitter
        # ...for the grace period; then it is cancelled with UNAVAILABLE.
        assert client.trailers(sid)[b"grpc-status"] == b"%d" % pg.Status.UNAVAILABLE
        assert service.cancelled == 1
        assert server.counters.age_closed == 1


# -- connection cap -------------------------------------------------------------------------------


async def test_server_max_concurrent_connections_closes_the_excess_at_once() -> None:
    options = pg.ServerOptions(max_concurrent_connections=2)
    async with serving(Echo(), options=options) as (server, target):
        async with RawClient.connect(target) as first, RawClient.connect(target) as second:
            for client in (first, second):
                sid = await client.call("/test.Echo/Unary", b"x")
                with trio.fail_after(30):
                    await client.until(lambda c=client, s=sid: c.ended(s))  # type: ignore[misc]
            async with Attacker.connect(target) as third:
                with trio.fail_after(30):
                    await third.closed()
                assert third.frames == []  # closed before a single byte of HTTP/2
            assert server.counters.connections_rejected == 1
            assert server.open_connections == 2
        with trio.fail_after(30):
            while server.open_connections:  # noqa: ASYNC110 (the server notices the closes)
                await trio.sleep(0.01)
        await _still_serves(target)  # room again
        assert server.counters.connections_accepted == 3


# -- memory per connection ----------------------------------------------------------------------


async def test_server_connection_state_stays_bounded_over_many_calls() -> None:
    # h2 remembers up to 65,536 closed streams per connection (~8 MB); prism keeps what late
    # frames need (twice max_concurrent_streams, at least 1024) and nothing else per call.
    options = pg.ServerOptions(max_concurrent_streams=100)
    async with (
        serving(Echo(), options=options) as (server, target),
        pg.open_channel(target) as channel,
    ):

        async def calls(n: int) -> None:
            for _ in range(n):
                assert await channel.unary_unary("/test.Echo/Unary", b"m", bytes) == b"m"

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(calls, 250)
        [conn] = server._connections
        h2c = conn.conn._h2
        assert h2c.highest_inbound_stream_id >= 2 * 2500 - 1  # 2,500 streams on it
        assert len(h2c._closed_streams) <= 1024
        assert len(h2c.streams) <= 2 * 64
        assert not conn.calls
        assert not conn.conn._streams
        assert not conn.conn._out
        assert not conn.conn._held
        assert not conn.conn._queued
        assert len(conn.conn._h2.decoder.header_table.dynamic_entries) < 100
