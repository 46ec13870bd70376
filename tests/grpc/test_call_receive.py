"""ServerCall's receive path: messages taken in bulk, with flow control and fairness intact."""

from __future__ import annotations

import hashlib

import h2.events
import pytest
import trio
from grpc_testkit import Echo, RawClient, grpc_frame, request_headers, serving

from prism import grpc as pg
from prism.grpc.connection import GATHER_AFTER
from prism.grpc.transport import YIELD_MESSAGES

MESSAGE = b"m" * 1024
FRAMED = 5 + len(MESSAGE)


class Sink(pg.Service):
    """Client streams: ``Slow`` takes one message and then waits for ``go``; ``Count``
    records, for each message, how often another task ran before it."""

    name = "test.Sink"

    def __init__(self) -> None:
        self.go = trio.Event()
        self.taken = 0
        self.ticks_seen: list[int] = []

    @pg.stream_unary("Slow", bytes, bytes)
    async def slow(self, call: pg.ServerCall) -> bytes:
        await call.receive_message()
        self.taken = 1
        await self.go.wait()
        async for _message in call:
            self.taken += 1
        return b"%d" % self.taken

    @pg.stream_unary("Count", bytes, bytes)
    async def count(self, call: pg.ServerCall) -> bytes:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            async for _message in call:
                self.ticks_seen.append(ticks)
            nursery.cancel_scope.cancel()
        return b"%d" % len(self.ticks_seen)


class Sender(RawClient):
    """A raw client that sends 1 KiB messages as far as its window allows."""

    async def fill(self, sid: int, limit: int = 1 << 30) -> int:
        """Send up to ``limit`` messages, until the stream's window is shut; how many."""
        count = 0
        while count < limit and self.h2.local_flow_control_window(sid) >= FRAMED:
            self.h2.send_data(sid, grpc_frame(MESSAGE))
            count += 1
        await self.flush()
        return count

    async def sync(self) -> None:
        """PING, and read until its ACK: the server has processed all we sent, and what it
        sent in answer (WINDOW_UPDATEs) has arrived."""
        acks = len(self.of(h2.events.PingAckReceived))
        self.h2.ping(b"%08d" % acks)
        await self.flush()
        await self.until(lambda: len(self.of(h2.events.PingAckReceived)) > acks)


def _stream_window_updates(client: RawClient, sid: int) -> int:
    """What the server's WINDOW_UPDATEs for ``sid`` gave back, in all."""
    return sum(e.delta for e in client.of(h2.events.WindowUpdated, sid))


async def test_server_call_slow_handler_bounds_what_the_client_may_send() -> None:
    # The handler stops reading after one message. The server reopens the stream's window
    # only for what the handler took, so what it holds for the handler (what the client
    # sent, less what the handler took) stays within one window, however long the client
    # keeps trying; and the WINDOW_UPDATEs give back no more than the handler took.
    service = Sink()
    window = 64 << 10
    options = pg.ServerOptions(
        initial_window_size=window, connection_window_size=16 * window, keepalive_min_time=0
    )
    async with serving(service, options=options) as (_, target), Sender.connect(target) as client:
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, request_headers("/test.Sink/Slow"))
        with trio.fail_after(20):
            await client.sync()  # the server's SETTINGS: its window
        sent = 0
        with trio.fail_after(20):
            while more := await client.fill(sid):
                sent += more
                await client.sync()
        assert service.taken == 1
        assert _stream_window_updates(client, sid) <= service.taken * FRAMED
        # The client stopped with less than a message's room left (one message taken, its
        # bytes below h2's threshold for a WINDOW_UPDATE): the server holds the rest.
        buffered = (sent - service.taken) * FRAMED
        assert window - 2 * FRAMED < buffered <= window

        # The handler reads again: the window reopens and the rest goes through.
        service.go.set()
        rest = 300
        with trio.fail_after(20):
            while rest:
                while client.h2.local_flow_control_window(sid) < FRAMED:
                    await client.receive()
                more = await client.fill(sid, rest)
                sent += more
                rest -= more
            client.h2.end_stream(sid)
            await client.flush()
            await client.until(lambda: client.ended(sid))
        assert client.trailers(sid)[b"grpc-status"] == b"0"
        response = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
        assert response[5:] == b"%d" % sent


async def test_server_call_large_messages_pass_a_small_window() -> None:
    # Messages four times the stream's window: their parts are acknowledged as they come
    # (the handler cannot take a message before it is whole), or the call would stall.
    class Sizes(pg.Service):
        name = "test.Sizes"

        @pg.stream_unary("Sizes", bytes, bytes)
        async def sizes(self, call: pg.ServerCall) -> bytes:
            return b",".join([b"%d" % len(m) async for m in call])

    window = 64 << 10
    options = pg.ServerOptions(initial_window_size=window, keepalive_min_time=0)
    async with (
        serving(Sizes(), options=options) as (_, target),
        pg.open_channel(target) as channel,
    ):
        with trio.fail_after(30):
            answer = await channel.stream_unary("/test.Sizes/Sizes", [bytes(4 * window)] * 3, bytes)
    assert answer == b",".join([b"%d" % (4 * window)] * 3)


async def test_server_call_burst_of_small_messages_arrives_whole_and_in_order() -> None:
    # 5,000 small messages written at once (many per read, reads that end inside frames):
    # each reaches the handler once, in the order sent.
    count = 5000
    async with serving() as (_, target), RawClient.connect(target) as client:
        with trio.fail_after(20):  # the server's SETTINGS: its 1 MiB window
            await client.until(lambda: client.h2.remote_settings.initial_window_size > 65535)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, request_headers("/test.Echo/Client"))
        messages = [b"%d," % i for i in range(count)]
        for message in messages:
            client.h2.send_data(sid, grpc_frame(message))
        client.h2.end_stream(sid)
        await client.flush()
        with trio.fail_after(20):
            await client.until(lambda: client.ended(sid))
    assert client.trailers(sid)[b"grpc-status"] == b"0"
    response = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
    assert response[5:] == b"".join(messages)


async def test_server_call_buffered_messages_still_let_other_tasks_run() -> None:
    # 400 small messages in one write: they reach the handler's inbox at once, and it takes
    # them without waiting. It must still yield every YIELD_MESSAGES messages.
    service = Sink()
    count = 400
    async with serving(service) as (_, target), RawClient.connect(target) as client:
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, request_headers("/test.Sink/Count"))
        for i in range(count):
            client.h2.send_data(sid, grpc_frame(b"%d" % i), end_stream=i == count - 1)
        await client.flush()
        with trio.fail_after(20):
            await client.until(lambda: client.ended(sid))
    assert client.trailers(sid)[b"grpc-status"] == b"0"
    seen = service.ticks_seen
    assert len(seen) == count
    longest = max(seen.count(tick) for tick in set(seen))
    # A yield lets the ticker run once before the handler goes on, or right after it: a
    # tick value repeats for at most two streaks.
    assert longest <= 2 * YIELD_MESSAGES


async def test_server_call_frames_split_across_reads_arrive_intact() -> None:
    # Messages of many sizes (some larger than a frame), written in pieces that end inside
    # frame headers, payloads and message prefixes.
    class Join(pg.Service):
        name = "test.Join"

        @pg.stream_unary("Join", bytes, bytes)
        async def join(self, call: pg.ServerCall) -> bytes:
            # A digest: the raw client acknowledges nothing, so the answer must fit its window.
            return hashlib.sha256(b"|".join([m async for m in call])).digest()

    messages = [bytes([65 + i % 26]) * (i * 997 % 20000) for i in range(60)]
    async with serving(Join()) as (_, target), RawClient.connect(target) as client:
        with trio.fail_after(20):  # the server's SETTINGS: its 1 MiB window
            await client.until(lambda: client.h2.remote_settings.initial_window_size > 65535)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, request_headers("/test.Join/Join"))
        for message in messages:
            client.h2.send_data(sid, grpc_frame(message)[:16384])
            rest = grpc_frame(message)[16384:]
            for pos in range(0, len(rest), 16384):
                client.h2.send_data(sid, rest[pos : pos + 16384])
        client.h2.end_stream(sid)
        data = client.h2.data_to_send()
        for pos in range(0, len(data), 4093):
            await client.stream.send_all(data[pos : pos + 4093])
            await trio.lowlevel.checkpoint()
        with trio.fail_after(20):
            await client.until(lambda: client.ended(sid))
        assert client.trailers(sid)[b"grpc-status"] == b"0"
        response = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
        assert response[5:] == hashlib.sha256(b"|".join(messages)).digest()


async def test_server_call_ping_pong_stream_never_misses_a_message() -> None:
    # Each request is sent only once the answer to the one before came back: after every read
    # that woke the handler, the reader's early read finds the socket empty and must go back
    # to waiting for it, or the next request would never be read (a hang, not a slow call).
    async with (
        serving() as (_, target),
        pg.open_channel(target) as channel,
        channel.stream("/test.Echo/Bidi", bytes) as call,
    ):
        with trio.fail_after(60):
            for i in range(300):
                await call.send_message(b"ping %d" % i)
                assert await call.receive_message() == b"PING %d" % i
            await call.end()
            assert await call.receive_message() is None
        assert call.status is pg.Status.OK


class Steps(pg.Service):
    """A client stream whose handler reports each message as it takes it."""

    name = "test.Steps"

    def __init__(self) -> None:
        self.seen_tx, self.seen = trio.open_memory_channel[bytes](1000)

    @pg.stream_unary("Steps", bytes, bytes)
    async def steps(self, call: pg.ServerCall) -> bytes:
        got = []
        async for message in call:
            got.append(message)
            self.seen_tx.send_nowait(message)
        return hashlib.sha256(b"|".join(got)).digest()  # small: within the client's window


@pytest.mark.parametrize("gather", [0.001, 0.0])
async def test_server_call_lock_step_client_stream_never_misses_a_message(gather: float) -> None:
    # Each message is sent only once the handler took the one before: past GATHER_AFTER
    # messages, every read the server gathers (client_stream_gather) finds the socket empty,
    # or the next message when the client's pause is shorter than the server's, and must go
    # back to waiting for data either way, or the next message would never be read (a hang,
    # not a slow call).
    service = Steps()
    options = pg.ServerOptions(client_stream_gather=gather)
    async with (
        serving(service, options=options) as (_, target),
        RawClient.connect(target) as client,
    ):
        with trio.fail_after(20):  # the server's SETTINGS: its 1 MiB window
            await client.until(lambda: client.h2.remote_settings.initial_window_size > 65535)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, request_headers("/test.Steps/Steps"))
        sent = [b"%d" % i for i in range(GATHER_AFTER + 60)]
        with trio.fail_after(60):
            for i, message in enumerate(sent):
                client.h2.send_data(sid, grpc_frame(message))
                await client.flush()
                assert await service.seen.receive() == message
                if i % 2:
                    await trio.sleep(0.003)  # past the gathering: the socket stays empty
            client.h2.end_stream(sid)
            await client.flush()
            await client.until(lambda: client.ended(sid))
    assert client.trailers(sid)[b"grpc-status"] == b"0"
    response = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
    assert response[5:] == hashlib.sha256(b"|".join(sent)).digest()


async def test_server_call_unary_calls_beside_a_gathering_client_stream_are_answered() -> None:
    # A client stream mid-flight gathers its reads only while it is alone on the connection:
    # unary calls on the same connection, started between its messages, are all answered.
    service = Steps()
    async with (
        serving(Echo(), service) as (_, target),
        RawClient.connect(target) as client,
    ):
        with trio.fail_after(20):  # the server's SETTINGS: its 1 MiB window
            await client.until(lambda: client.h2.remote_settings.initial_window_size > 65535)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, request_headers("/test.Steps/Steps"))
        unary = []
        with trio.fail_after(60):
            for i in range(GATHER_AFTER + 30):
                client.h2.send_data(sid, grpc_frame(MESSAGE))
                await client.flush()
                await service.seen.receive()
                unary.append(await client.call("/test.Echo/Unary", b"u%d" % i))
            client.h2.end_stream(sid)
            await client.flush()
            await client.until(lambda: all(client.ended(s) for s in [sid, *unary]))
        for i, u in enumerate(unary):
            assert client.trailers(u)[b"grpc-status"] == b"0"
            data = b"".join(e.data for e in client.of(h2.events.DataReceived, u))
            assert data[5:] == b"u%d" % i
    assert client.trailers(sid)[b"grpc-status"] == b"0"
