"""prism.grpc channel ↔ prism.grpc server over real sockets on 127.0.0.1."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import AsyncIterator

import pytest
import trio
from grpc_testkit import Echo, serving

from prism import grpc as pg

# -- the four call shapes -----------------------------------------------------------------------


async def test_channel_unary_unary() -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        assert await channel.unary_unary("/test.Echo/Unary", b"hello", bytes) == b"hello"
        assert await channel.unary_unary("/test.Echo/Unary", b"", bytes) == b""


async def test_channel_unary_stream() -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        replies = [m async for m in channel.unary_stream("/test.Echo/Server", b"4", bytes)]
        assert replies == [b"0", b"1", b"2", b"3"]
        async with channel.stream("/test.Echo/Server", bytes) as call:
            await call.send_message(b"2")
            await call.end()
            assert [m async for m in call] == [b"0", b"1"]
            assert call.status is pg.Status.OK


async def test_channel_stream_unary() -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        parts = [b"a", b"bc", b"", b"d"]
        assert await channel.stream_unary("/test.Echo/Client", parts, bytes) == b"abcd"
        assert await channel.stream_unary("/test.Echo/Client", [], bytes) == b""


async def test_channel_stream_stream_interleaves() -> None:
    async with (
        serving() as (_, target),
        pg.open_channel(target) as channel,
        channel.stream("/test.Echo/Bidi", bytes) as call,
    ):
        for word in (b"ping", b"pong", b"x" * 100_000):
            await call.send_message(word)
            assert await call.receive_message() == word.upper()
        await call.end()
        assert await call.receive_message() is None
        assert call.status is pg.Status.OK


async def test_channel_unknown_method_is_unimplemented() -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.Unimplemented, match=r"/test\.Echo/Nope"):
            await channel.unary_unary("/test.Echo/Nope", b"", bytes)
        # The connection is still fine.
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


# -- metadata and status ------------------------------------------------------------------------


class Metadata(pg.Service):
    name = "test.Metadata"

    def __init__(self) -> None:
        self.seen: pg.Metadata = []

    @pg.unary_unary("Echo", bytes, bytes)
    async def echo(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.seen = call.metadata
        await call.send_initial_metadata([("x-initial", "hello"), ("initial-bin", b"\x00\xff\x10")])
        call.set_trailing_metadata([("x-trailing", "bye"), ("trailing-bin", b"\xfe\x00")])
        return request

    @pg.unary_unary("Fail", bytes, bytes)
    async def fail(self, request: bytes, call: pg.ServerCall) -> bytes:
        call.set_trailing_metadata([("x-set-before", "1")])
        raise pg.NotFound(
            "schlüssel nicht gefunden — 100% ✓ ",
            trailers=[("x-detail", "no such key"), ("detail-bin", b"\x01\x02")],
        )


async def test_channel_metadata_round_trip() -> None:
    service = Metadata()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        sent = [("x-trace-id", "abc-123"), ("blob-bin", b"\x00\x01\xfe\xff"), ("x-trace-id", "2")]
        async with channel.stream("/test.Metadata/Echo", bytes, metadata=sent) as call:
            await call.send_message(b"body")
            await call.end()
            assert await call.receive_single() == b"body"
        # Invocation metadata as sent (plus the client's user-agent, as in grpcio).
        assert [m for m in service.seen if m[0] != "user-agent"] == sent
        assert ("user-agent", "prism-grpc/0.1") in service.seen
        assert call.initial_metadata == [("x-initial", "hello"), ("initial-bin", b"\x00\xff\x10")]
        assert call.trailing_metadata == [("x-trailing", "bye"), ("trailing-bin", b"\xfe\x00")]


async def test_channel_error_status_with_non_ascii_message_and_trailers() -> None:
    async with serving(Metadata()) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.NotFound) as info:
            await channel.unary_unary("/test.Metadata/Fail", b"", bytes)
    assert info.value.status is pg.Status.NOT_FOUND
    assert info.value.message == "schlüssel nicht gefunden — 100% ✓ "
    assert ("x-detail", "no such key") in info.value.trailers
    assert ("detail-bin", b"\x01\x02") in info.value.trailers
    assert ("x-set-before", "1") in info.value.trailers


async def test_channel_invalid_metadata_is_refused_locally() -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.Internal, match="reserved"):
            await channel.unary_unary("/test.Echo/Unary", b"", bytes, metadata=[("te", "x")])
        with pytest.raises(pg.Internal, match="-bin"):
            await channel.unary_unary("/test.Echo/Unary", b"", bytes, metadata=[("a-bin", "s")])
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


# -- deadlines and cancellation -----------------------------------------------------------------


class Slow(pg.Service):
    name = "test.Slow"

    def __init__(self) -> None:
        self.remaining: float | None = None
        self.cancelled = trio.Event()
        self.started = trio.Event()
        self.sent = 0

    @pg.unary_unary("Sleep", bytes, bytes)
    async def sleep(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.remaining = call.time_remaining
        self.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return b""  # pragma: no cover

    @pg.unary_stream("Forever", bytes, bytes)
    async def forever(self, request: bytes, call: pg.ServerCall) -> None:
        try:
            while True:
                await call.send_message(b"tick")
                self.sent += 1
                self.started.set()
                await trio.sleep(0.001)
        except trio.Cancelled:
            self.cancelled.set()
            raise


async def test_channel_deadline_is_sent_and_cancels_the_handler() -> None:
    service = Slow()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        with trio.move_on_after(0.5) as scope:
            await channel.unary_unary("/test.Slow/Sleep", b"", bytes)
        assert scope.cancelled_caught
        with trio.fail_after(2):
            await service.cancelled.wait()
    # The server saw the caller's deadline as grpc-timeout.
    assert service.remaining is not None
    assert 0.3 < service.remaining <= 0.5


async def test_channel_without_deadline_sends_no_timeout() -> None:
    service = Slow()
    async with (
        serving(service) as (_, target),
        pg.open_channel(target) as channel,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(channel.unary_unary, "/test.Slow/Sleep", b"", bytes)
        await service.started.wait()
        nursery.cancel_scope.cancel()
    assert service.remaining == math.inf


async def test_channel_cancel_mid_stream_cancels_the_handler() -> None:
    service = Slow()
    async with serving(service, Echo()) as (_, target), pg.open_channel(target) as channel:
        async with channel.stream("/test.Slow/Forever", bytes) as call:
            await call.send_message(b"")
            await call.end()
            assert await call.receive_message() == b"tick"
            # Leaving the block before the call ended sends RST_STREAM(CANCEL).
        with trio.fail_after(2):
            await service.cancelled.wait()
        # The same connection keeps serving.
        assert await channel.unary_unary("/test.Echo/Unary", b"after", bytes) == b"after"


async def test_channel_exception_in_caller_cancels_the_call() -> None:
    service = Slow()

    async def buggy_caller(channel: pg.Channel) -> None:
        async with channel.stream("/test.Slow/Forever", bytes) as call:
            await call.send_message(b"")
            await call.end()
            await call.receive_message()
            raise KeyError("caller bug")

    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(KeyError):
            await buggy_caller(channel)
        with trio.fail_after(2):
            await service.cancelled.wait()


# -- message size limits ------------------------------------------------------------------------


async def test_channel_max_send_message_size_is_enforced_before_sending() -> None:
    options = pg.ChannelOptions(max_send_message_size=1000)
    async with serving() as (_, target), pg.open_channel(target, options=options) as channel:
        with pytest.raises(pg.ResourceExhausted, match="1001"):
            await channel.unary_unary("/test.Echo/Unary", b"x" * 1001, bytes)
        async with channel.stream("/test.Echo/Bidi", bytes) as call:
            with pytest.raises(pg.ResourceExhausted):
                await call.send_message(b"x" * 1001)
            await call.send_message(b"x" * 1000)
            await call.end()
            assert [m async for m in call] == [b"X" * 1000]


async def test_channel_max_receive_message_size_is_enforced() -> None:
    options = pg.ChannelOptions(max_receive_message_size=1000)
    async with serving() as (_, target), pg.open_channel(target, options=options) as channel:
        assert await channel.unary_unary("/test.Echo/Unary", b"x" * 1000, bytes) == b"x" * 1000
        with pytest.raises(pg.ResourceExhausted, match="1001"):
            await channel.unary_unary("/test.Echo/Unary", b"x" * 1001, bytes)
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


async def test_channel_server_receive_limit_is_resource_exhausted() -> None:
    options = pg.ServerOptions(max_receive_message_size=1000)
    async with serving(options=options) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.ResourceExhausted, match="1001"):
            await channel.unary_unary("/test.Echo/Unary", b"x" * 1001, bytes)
        # A streaming call the server refuses midway ends with the same status.
        async with channel.stream("/test.Echo/Bidi", bytes) as call:
            await call.send_message(b"small")
            assert await call.receive_message() == b"SMALL"
            await call.send_message(b"y" * 5000)
            with pytest.raises(pg.ResourceExhausted):
                await call.receive_message()
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


async def test_channel_server_send_limit_is_resource_exhausted() -> None:
    options = pg.ServerOptions(max_send_message_size=1000)
    async with serving(options=options) as (_, target), pg.open_channel(target) as channel:
        assert await channel.unary_unary("/test.Echo/Unary", b"x" * 1000, bytes) == b"x" * 1000
        with pytest.raises(pg.ResourceExhausted, match="1001"):
            await channel.unary_unary("/test.Echo/Unary", b"x" * 1001, bytes)


async def test_channel_large_messages_both_ways() -> None:
    size = 8 << 20
    server_options = pg.ServerOptions(max_receive_message_size=size)
    options = pg.ChannelOptions(max_receive_message_size=size)
    async with (
        serving(options=server_options) as (_, target),
        pg.open_channel(target, options=options) as channel,
    ):
        payload = bytes(range(256)) * (size // 256)
        assert await channel.unary_unary("/test.Echo/Unary", payload, bytes) == payload


# -- concurrency and connections ----------------------------------------------------------------


class Peers(pg.Service):
    name = "test.Peers"

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.active = 0
        self.most = 0
        self.all_in = trio.Event()

    @pg.unary_unary("Hold", bytes, bytes)
    async def hold(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.addresses.add(call.peer.address)
        self.active += 1
        self.most = max(self.most, self.active)
        if self.active == 100:
            self.all_in.set()
        with trio.move_on_after(5):
            await self.all_in.wait()
        self.active -= 1
        return request


async def test_channel_100_concurrent_streams_on_one_connection() -> None:
    service = Peers()
    results: dict[int, bytes] = {}
    async with serving(service) as (_, target), pg.open_channel(target) as channel:

        async def one(i: int) -> None:
            results[i] = await channel.unary_unary("/test.Peers/Hold", b"%d" % i, bytes)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
    assert results == {i: b"%d" % i for i in range(100)}
    assert service.most == 100  # all were in flight at once
    assert len(service.addresses) == 1  # over a single connection


async def test_channel_many_sequential_calls_do_not_leak_streams() -> None:
    # Every call closes its stream: after far more calls than max_concurrent_streams the
    # connection still opens new ones.
    options = pg.ServerOptions(max_concurrent_streams=5)
    async with serving(options=options) as (_, target), pg.open_channel(target) as channel:
        for i in range(30):
            async with channel.stream("/test.Echo/Bidi", bytes) as call:
                await call.send_message(b"%d" % i)
                assert await call.receive_message() == b"%d" % i
                # Leave without half-closing or reading the end: cancelled, stream reset.
            assert await channel.unary_unary("/test.Echo/Unary", b"u", bytes) == b"u"


class Early(pg.Service):
    name = "test.Early"

    @pg.stream_unary("Answer", bytes, bytes)
    async def answer(self, call: pg.ServerCall) -> bytes:
        return await call.receive_message()  # answers without waiting for the half-close


async def test_channel_early_answers_do_not_leak_streams() -> None:
    options = pg.ServerOptions(max_concurrent_streams=5)
    async with serving(Early(), options=options) as (_, target), pg.open_channel(target) as ch:
        for i in range(30):
            async with ch.stream("/test.Early/Answer", bytes) as call:
                await call.send_message(b"%d" % i)
                assert await call.receive_single() == b"%d" % i


async def test_channel_reconnects_after_server_restart() -> None:
    async with trio.open_nursery() as nursery:
        server = pg.Server([Echo()])
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        async with pg.open_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/test.Echo/Unary", b"one", bytes) == b"one"
            await server.shutdown(grace=1)
            with pytest.raises(pg.Unavailable):
                await channel.unary_unary("/test.Echo/Unary", b"down", bytes)
            restarted = pg.Server([Echo()])
            await nursery.start(restarted.serve_tcp, "127.0.0.1", port)
            assert await channel.unary_unary("/test.Echo/Unary", b"two", bytes) == b"two"
            await restarted.shutdown(grace=1)


async def test_channel_reconnects_after_the_connection_is_dropped() -> None:
    async with serving() as (server, target), pg.open_channel(target) as channel:
        assert await channel.unary_unary("/test.Echo/Unary", b"one", bytes) == b"one"
        # Kill every server-side connection abruptly (no GOAWAY).
        for conn in list(server._connections):
            conn.cancel()
        await trio.sleep(0.1)
        assert await channel.unary_unary("/test.Echo/Unary", b"two", bytes) == b"two"


async def test_channel_unreachable_target_is_unavailable() -> None:
    async with serving() as (_, target):
        pass  # the port is closed again
    async with pg.open_channel(target) as channel:
        with pytest.raises(pg.Unavailable, match="cannot connect"):
            await channel.unary_unary("/test.Echo/Unary", b"", bytes)


async def test_channel_closed_channel_is_unavailable() -> None:
    async with serving() as (_, target):
        async with pg.open_channel(target) as channel:
            pass
        with pytest.raises(pg.Unavailable, match="closed"):
            await channel.unary_unary("/test.Echo/Unary", b"", bytes)


async def test_channel_sender_blocked_by_flow_control_wakes_when_the_server_refuses() -> None:
    # The client is parked in send_message (a 16 MiB request behind flow control) when the
    # server rejects the request as too large: the call must end, not hang.
    options = pg.ServerOptions(max_receive_message_size=1 << 20)

    async def send_too_much(channel: pg.Channel) -> None:
        async with channel.stream("/test.Echo/Client", bytes) as call:
            await call.send_message(b"x" * (16 << 20))
            await call.send_message(b"more")
            await call.end()
            await call.receive_single()

    async with serving(options=options) as (_, target), pg.open_channel(target) as channel:
        with trio.fail_after(5), pytest.raises(pg.ResourceExhausted):
            await send_too_much(channel)
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


# -- compression --------------------------------------------------------------------------------

TEXT = b"".join(b"line %05d of a compressible message\n" % i for i in range(3000))


@pytest.mark.parametrize(("client", "server"), [("gzip", "deflate"), ("deflate", "gzip")])
async def test_channel_compression_both_ways(client: str, server: str) -> None:
    server_options = pg.ServerOptions(compression=server)
    options = pg.ChannelOptions(compression=client)
    async with (
        serving(options=server_options) as (_, target),
        pg.open_channel(target, options=options) as channel,
    ):
        assert await channel.unary_unary("/test.Echo/Unary", TEXT, bytes) == TEXT
        async with channel.stream("/test.Echo/Bidi", bytes) as call:
            for message in (TEXT, b"", b"short"):
                await call.send_message(message)
                assert await call.receive_message() == message.upper()
            await call.end()
            assert await call.receive_message() is None
        assert call.response_encoding == server
        parts = [TEXT, b"x", TEXT]
        assert await channel.stream_unary("/test.Echo/Client", parts, bytes) == b"".join(parts)


async def test_channel_server_does_not_compress_by_default() -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        async with channel.stream("/test.Echo/Unary", bytes, compression="gzip") as call:
            await call.send_message(TEXT)
            await call.end()
            assert await call.receive_single() == TEXT
        assert call.response_encoding == "identity"


async def test_channel_compressed_request_inflating_past_the_server_limit() -> None:
    # 8 MiB of zeros compress to ~8 KiB: small on the wire, refused as it inflates.
    options = pg.ServerOptions(max_receive_message_size=1 << 20)
    async with serving(options=options) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.ResourceExhausted, match="decompressed"):
            await channel.unary_unary("/test.Echo/Unary", bytes(8 << 20), bytes, compression="gzip")
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


async def test_channel_compressed_response_inflating_past_the_client_limit() -> None:
    server_options = pg.ServerOptions(compression="gzip", max_receive_message_size=16 << 20)
    options = pg.ChannelOptions(max_receive_message_size=1 << 20)
    async with (
        serving(options=server_options) as (_, target),
        pg.open_channel(target, options=options) as channel,
    ):
        with pytest.raises(pg.ResourceExhausted, match="decompressed"):
            await channel.unary_unary("/test.Echo/Unary", bytes(8 << 20), bytes, compression="gzip")
        assert await channel.unary_unary("/test.Echo/Unary", b"ok", bytes) == b"ok"


def test_channel_compression_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"ChannelOptions\.compression"):
        pg.ChannelOptions(compression="br")
    with pytest.raises(ValueError, match=r"ServerOptions\.compression"):
        pg.ServerOptions(compression="zstd")


# -- call objects: metadata, status, iteration, deadlines ----------------------------------------


class Api(pg.Service):
    """What the client-API tests need from a server."""

    name = "test.Api"

    def __init__(self) -> None:
        self.next = trio.Event()
        self.cancelled = trio.Event()
        self.remaining: float | None = None
        self.received: list[bytes] = []

    @pg.unary_unary("Meta", bytes, bytes)
    async def meta(self, request: bytes, call: pg.ServerCall) -> bytes:
        await call.send_initial_metadata([("x-initial", "1")])
        call.set_trailing_metadata([("x-trailing", "2"), ("t-bin", b"\x00")])
        if request == b"fail":
            raise pg.NotFound("no such thing", trailers=[("x-why", "gone")])
        return request

    @pg.unary_stream("Lockstep", bytes, bytes)
    async def lockstep(self, request: bytes, call: pg.ServerCall) -> None:
        # Message n + 1 is only sent after the client has seen message n.
        await call.send_initial_metadata([("x-initial", "s")])
        for i in range(int(request)):
            self.next = trio.Event()
            await call.send_message(b"%d" % i)
            await self.next.wait()
        call.set_trailing_metadata([("x-count", request.decode())])

    @pg.unary_stream("Flood", bytes, bytes)
    async def flood(self, request: bytes, call: pg.ServerCall) -> None:
        count, size = map(int, request.split())
        chunk = b"x" * size
        for _ in range(count):
            await call.send_message(chunk)

    @pg.unary_stream("Forever", bytes, bytes)
    async def forever(self, request: bytes, call: pg.ServerCall) -> None:
        self.remaining = call.time_remaining
        try:
            while True:
                await call.send_message(b"tick")
                await trio.sleep(0.001)
        except trio.Cancelled:
            self.cancelled.set()
            raise

    @pg.unary_unary("Sleep", bytes, bytes)
    async def sleep(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.remaining = call.time_remaining
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return b""  # pragma: no cover

    @pg.unary_unary("TooSlow", bytes, bytes)
    async def too_slow(self, request: bytes, call: pg.ServerCall) -> bytes:
        raise pg.DeadlineExceeded("the database did not answer in time")

    @pg.stream_unary("Collect", bytes, bytes)
    async def collect(self, call: pg.ServerCall) -> bytes:
        try:
            async for message in call:
                self.received.append(message)
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return b",".join(self.received)

    @pg.stream_stream("Chat", bytes, bytes)
    async def chat(self, call: pg.ServerCall) -> None:
        try:
            async for message in call:
                await call.send_message(message[::-1])
        except trio.Cancelled:
            self.cancelled.set()
            raise


async def test_channel_unary_call_object_has_metadata_and_status() -> None:
    async with serving(Api()) as (_, target), pg.open_channel(target) as channel:
        call = channel.unary_unary("/test.Api/Meta", b"hi", bytes)
        assert call.status is None
        assert await call == b"hi"
        assert call.initial_metadata == [("x-initial", "1")]
        assert call.trailing_metadata == [("x-trailing", "2"), ("t-bin", b"\x00")]
        assert call.status is pg.Status.OK
        assert await call == b"hi"  # awaiting again gives the same outcome, no second RPC

        failed = channel.unary_unary("/test.Api/Meta", b"fail", bytes)
        with pytest.raises(pg.NotFound) as info:
            await failed
        assert failed.status is pg.Status.NOT_FOUND
        assert failed.status_message == "no such thing"
        assert ("x-why", "gone") in failed.trailing_metadata
        assert info.value.trailers == failed.trailing_metadata
        # The simple form still returns just the message.
        assert await channel.unary_unary("/test.Api/Meta", b"simple", bytes) == b"simple"


async def test_channel_unary_stream_yields_each_message_as_it_arrives() -> None:
    service = Api()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        got = []
        with trio.fail_after(10):
            async with channel.unary_stream("/test.Api/Lockstep", b"5", bytes) as call:
                async for message in call:
                    # The server sends the next one only after this one was seen: collecting
                    # the whole stream before yielding would deadlock here.
                    got.append(message)
                    assert call.initial_metadata == [("x-initial", "s")]
                    service.next.set()
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert call.status is pg.Status.OK
        assert call.trailing_metadata == [("x-count", "5")]


async def test_channel_unary_stream_long_stream_memory_stays_bounded() -> None:
    # 128 MiB through a consumer that takes one message at a time: what is held at any moment
    # (client and server, both in this process) stays within a few flow-control windows.
    count, size = 2048, 64 << 10
    options = pg.ChannelOptions(max_receive_message_size=size + 100)
    tracemalloc.start()
    try:
        async with (
            serving(Api()) as (_, target),
            pg.open_channel(target, options=options) as channel,
        ):
            received = 0
            stream = channel.unary_stream("/test.Api/Flood", b"%d %d" % (count, size), bytes)
            async for message in stream:
                received += len(message)
                await trio.lowlevel.checkpoint()
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == count * size
    assert peak < 24 << 20, f"peak {peak / (1 << 20):.1f} MiB for a 128 MiB stream"


async def test_channel_unary_stream_left_early_cancels_the_server_handler() -> None:
    service = Api()
    async with serving(service, Echo()) as (_, target), pg.open_channel(target) as channel:
        seen = 0
        async for _message in channel.unary_stream("/test.Api/Forever", b"", bytes):
            seen += 1
            if seen == 3:
                break  # no `async with`: dropping the iterator cancels the call
        with trio.fail_after(5):
            await service.cancelled.wait()
        assert await channel.unary_unary("/test.Echo/Unary", b"after", bytes) == b"after"


async def test_channel_unary_stream_async_with_left_early_cancels() -> None:
    service = Api()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        async with channel.unary_stream("/test.Api/Forever", b"", bytes) as call:
            assert await call.receive_message() == b"tick"
        assert call.status is pg.Status.CANCELLED
        with trio.fail_after(5):
            await service.cancelled.wait()


async def test_channel_stream_unary_accepts_sync_and_async_iterables() -> None:
    async def produce() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            await trio.lowlevel.checkpoint()
            yield part

    async with serving(Api()) as (_, target), pg.open_channel(target) as channel:
        assert await channel.stream_unary("/test.Api/Collect", produce(), bytes) == b"a,b,c"
        call = channel.stream_unary("/test.Api/Collect", iter([b"d"]), bytes)
        assert await call == b"a,b,c,d"  # the same service instance keeps what it received
        assert call.status is pg.Status.OK


async def test_channel_stream_unary_iterable_failure_cancels_the_call() -> None:
    service = Api()

    async def broken() -> AsyncIterator[bytes]:
        yield b"one"
        # Fail once the handler runs: a stream reset in the same read that opened it never
        # starts a handler at all (the server's rapid-reset defence), so there would be
        # nothing to cancel.
        with trio.fail_after(10):
            while not service.received:  # noqa: ASYNC110
                await trio.sleep(0.01)
        raise KeyError("producer bug")

    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(KeyError):
            await channel.stream_unary("/test.Api/Collect", broken(), bytes)
        with trio.fail_after(5):
            await service.cancelled.wait()


async def test_channel_stream_stream_from_an_async_iterable_interleaves() -> None:
    async with serving(Api()) as (_, target), pg.open_channel(target) as channel:
        send, receive = trio.open_memory_channel[bytes](0)
        got = []
        async with send, channel.stream_stream("/test.Api/Chat", receive, bytes) as call:
            for word in (b"abc", b"xyz"):
                await send.send(word)  # sent only after the previous reply arrived
                got.append(await call.receive_message())
        assert got == [b"cba", b"zyx"]
        # A sync iterable, consumed by iterating the call directly.
        replies = [m async for m in channel.stream_stream("/test.Api/Chat", [b"12", b"34"], bytes)]
        assert replies == [b"21", b"43"]


async def test_channel_stream_stream_iterable_failure_is_raised_from_the_loop() -> None:
    service = Api()

    async def broken() -> AsyncIterator[bytes]:
        yield b"one"
        await trio.sleep(0.05)
        raise KeyError("producer bug")

    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(KeyError):
            async for _reply in channel.stream_stream("/test.Api/Chat", broken(), bytes):
                pass
        with trio.fail_after(5):
            await service.cancelled.wait()
        # The channel (whose nursery ran the sender) is still fine.
        assert await channel.unary_unary("/test.Api/Meta", b"ok", bytes) == b"ok"


async def test_channel_timeout_raises_deadline_exceeded_and_cancels_the_handler() -> None:
    service = Api()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        call = channel.unary_unary("/test.Api/Sleep", b"", bytes, timeout=0.3)
        with pytest.raises(pg.DeadlineExceeded):
            await call
        assert call.status is pg.Status.DEADLINE_EXCEEDED
        with trio.fail_after(5):
            await service.cancelled.wait()
    assert service.remaining is not None
    assert 0.1 < service.remaining <= 0.3  # sent as grpc-timeout


async def test_channel_timeout_on_a_stream() -> None:
    service = Api()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        ticks: list[bytes] = []

        async def read_all() -> None:
            async for tick in channel.unary_stream("/test.Api/Forever", b"", bytes, timeout=0.3):
                ticks.append(tick)

        with pytest.raises(pg.DeadlineExceeded):
            await read_all()
        assert ticks
        with trio.fail_after(5):
            await service.cancelled.wait()


async def test_channel_timeout_is_bounded_by_the_enclosing_scope() -> None:
    service = Api()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        with trio.move_on_after(0.3) as scope:  # sooner than the timeout: Trio's rules apply
            await channel.unary_unary("/test.Api/Sleep", b"", bytes, timeout=30)
        assert scope.cancelled_caught
    assert service.remaining is not None
    assert service.remaining <= 0.3


async def test_channel_deadline_exceeded_from_the_server_is_the_same_exception() -> None:
    async with serving(Api()) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.DeadlineExceeded, match="database"):
            await channel.unary_unary("/test.Api/TooSlow", b"", bytes, timeout=30)


async def test_channel_errors_leave_open_channel_unwrapped() -> None:
    async with serving(Api()) as (_, target):
        with pytest.raises(pg.NotFound):
            async with pg.open_channel(target) as channel:
                await channel.unary_unary("/test.Api/Meta", b"fail", bytes)
