"""prism's client against real servers nobody here wrote: grpclib and grpcio (grpc.aio).

Each peer runs in its own process (tests/interop/peers/) and implements the interop.Echo
contract described in peers/contract.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from interop_service import LIMIT, peer_server

from prism import grpc as pg


@pytest.fixture(scope="module", params=["grpclib_server", "grpcio_server"])
def peer(request: pytest.FixtureRequest) -> Iterator[str]:
    with peer_server(request.param) as target:
        yield target


@asynccontextmanager
async def channel_to(target: str, max_frame_size: int = 1 << 14) -> AsyncIterator[pg.Channel]:
    options = pg.ChannelOptions(max_receive_message_size=LIMIT, max_frame_size=max_frame_size)
    async with pg.open_channel(target, options=options) as channel:
        yield channel


async def stats(channel: pg.Channel) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        await channel.unary_unary("/interop.Echo/Stats", b"", bytes)
    )
    return result


async def wait_cancelled(channel: pg.Channel, before: int) -> None:
    with trio.fail_after(3):
        while (await stats(channel))["cancelled"] <= before:  # noqa: ASYNC110 (another process)
            await trio.sleep(0.02)


async def test_prism_client_unary_with_metadata_round_trip(peer: str) -> None:
    sent = [("x-token", "abc 123"), ("x-blob-bin", b"\x00\x01\xfe\xff"), ("other", "not echoed")]
    async with (
        channel_to(peer) as channel,
        channel.stream("/interop.Echo/Unary", bytes, metadata=sent) as call,
    ):
        await call.send_message(b"hello")
        await call.end()
        assert await call.receive_single() == b"hello"
    initial = [(k, v) for k, v in call.initial_metadata if k.startswith("x-")]
    assert initial == [("x-token", "abc 123"), ("x-blob-bin", b"\x00\x01\xfe\xff")]
    trailing = [(k, v) for k, v in call.trailing_metadata if k.startswith("trailing-")]
    assert trailing == [
        ("trailing-x-token", "abc 123"),
        ("trailing-x-blob-bin", b"\x00\x01\xfe\xff"),
    ]
    assert call.status is pg.Status.OK


async def test_prism_client_unary_stream(peer: str) -> None:
    async with channel_to(peer) as channel:
        stream = channel.unary_stream("/interop.Echo/ServerStream", b"5", bytes)
        assert [m async for m in stream] == [b"0", b"1", b"2", b"3", b"4"]
        assert stream.status is pg.Status.OK
        empty = channel.unary_stream("/interop.Echo/ServerStream", b"0", bytes)
        assert [m async for m in empty] == []


async def test_prism_client_unary_call_object_has_metadata_and_status(peer: str) -> None:
    sent = [("x-token", "abc 123"), ("x-blob-bin", b"\x00\x01")]
    async with channel_to(peer) as channel:
        call = channel.unary_unary("/interop.Echo/Unary", b"hello", bytes, metadata=sent)
        assert await call == b"hello"
        assert [(k, v) for k, v in call.initial_metadata if k.startswith("x-")] == sent
        trailing = [(k, v) for k, v in call.trailing_metadata if k.startswith("trailing-")]
        assert trailing == [("trailing-x-token", "abc 123"), ("trailing-x-blob-bin", b"\x00\x01")]
        assert call.status is pg.Status.OK


async def test_prism_client_stream_unary(peer: str) -> None:
    async with channel_to(peer) as channel:
        parts = [b"a", b"", b"bc", b"d" * 70_000]
        reply = await channel.stream_unary("/interop.Echo/ClientStream", parts, bytes)
        assert reply == b"abc" + b"d" * 70_000

        async def generated() -> AsyncIterator[bytes]:
            for part in parts:
                await trio.lowlevel.checkpoint()
                yield part

        reply = await channel.stream_unary("/interop.Echo/ClientStream", generated(), bytes)
        assert reply == b"abc" + b"d" * 70_000


async def test_prism_client_stream_stream_from_an_async_iterable(peer: str) -> None:
    async with channel_to(peer) as channel:
        send, receive = trio.open_memory_channel[bytes](0)
        replies = channel.stream_stream("/interop.Echo/Bidi", receive, bytes)
        got = []
        async with send, replies:
            for word in (b"ping", b"pong", b"z" * 100_000):
                await send.send(word)  # the next request only once the previous reply came
                got.append(await replies.receive_message())
        assert got == [b"PING", b"PONG", b"Z" * 100_000]


async def test_prism_client_timeout_raises_deadline_exceeded(peer: str) -> None:
    async with channel_to(peer) as channel:
        before = (await stats(channel))["cancelled"]
        with pytest.raises(pg.DeadlineExceeded):
            await channel.unary_unary("/interop.Echo/Sleep", b"", bytes, timeout=0.4)
        await wait_cancelled(channel, before)
        remaining = (await stats(channel))["remaining"]
        assert 0.1 < remaining <= 0.4


async def test_prism_client_stream_stream(peer: str) -> None:
    async with channel_to(peer) as channel, channel.stream("/interop.Echo/Bidi", bytes) as call:
        for word in (b"ping", b"pong", b"z" * 100_000):
            await call.send_message(word)
            assert await call.receive_message() == word.upper()
        await call.end()
        assert await call.receive_message() is None


async def test_prism_client_status_with_non_ascii_message(peer: str) -> None:
    message = "schlüssel nicht gefunden: 100% ✓"
    async with channel_to(peer) as channel:
        with pytest.raises(pg.NotFound) as info:
            await channel.unary_unary("/interop.Echo/Fail", b"5|" + message.encode(), bytes)
        assert info.value.message == message
        with pytest.raises(pg.FailedPrecondition):
            await channel.unary_unary("/interop.Echo/Fail", b"9|x", bytes)


async def test_prism_client_accepts_status_message_with_surrounding_spaces(peer: str) -> None:
    # grpcio sends "missing " unencoded. HTTP/2 (RFC 9113 §8.2.1) calls such a field malformed,
    # and h2's inbound validation used to make it a connection error: the call failed with
    # PROTOCOL_ERROR and the whole connection went down with it.
    async with channel_to(peer) as channel:
        with pytest.raises(pg.NotFound) as info:
            await channel.unary_unary("/interop.Echo/Fail", b"5| missing ", bytes)
        assert info.value.message.strip() == "missing"
        assert await channel.unary_unary("/interop.Echo/Unary", b"still up", bytes) == b"still up"


async def test_prism_client_unimplemented_method(peer: str) -> None:
    async with channel_to(peer) as channel:
        with pytest.raises(pg.Unimplemented):
            await channel.unary_unary("/interop.Echo/Nope", b"", bytes)
        with pytest.raises(pg.Unimplemented):
            await channel.unary_unary("/interop.Missing/Unary", b"", bytes)


async def test_prism_client_deadline_reaches_the_server(peer: str) -> None:
    async with channel_to(peer) as channel:
        before = (await stats(channel))["cancelled"]
        with trio.move_on_after(0.4) as scope:
            await channel.unary_unary("/interop.Echo/Sleep", b"", bytes)
        assert scope.cancelled_caught
        # The peer saw our deadline as grpc-timeout and cancelled its handler.
        await wait_cancelled(channel, before)
        remaining = (await stats(channel))["remaining"]
        assert 0.1 < remaining <= 0.4


async def test_prism_client_cancellation_mid_stream(peer: str) -> None:
    async with channel_to(peer) as channel:
        before = (await stats(channel))["cancelled"]
        async with channel.stream("/interop.Echo/Ticks", bytes) as call:
            await call.send_message(b"")
            await call.end()
            for _ in range(3):
                assert await call.receive_message() == b"tick"
        await wait_cancelled(channel, before)
        # The connection is still usable.
        assert await channel.unary_unary("/interop.Echo/Unary", b"after", bytes) == b"after"


@pytest.mark.parametrize("max_frame_size", [1 << 14, (1 << 24) - 1], ids=["16k", "16m"])
async def test_prism_client_16_mib_messages(peer: str, max_frame_size: int) -> None:
    payload = bytes(range(256)) * ((16 << 20) // 256)
    async with channel_to(peer, max_frame_size) as channel:
        assert await channel.unary_unary("/interop.Echo/Unary", payload, bytes) == payload
        async with channel.stream("/interop.Echo/Bidi", bytes) as call:
            await call.send_message(payload)
            assert await call.receive_message() == payload.upper()
            await call.end()
            assert await call.receive_message() is None


async def test_prism_client_100_concurrent_streams_on_one_connection(peer: str) -> None:
    async with channel_to(peer) as channel:
        await channel.unary_unary("/interop.Echo/Unary", b"", bytes)
        connection = await channel.connection()
        replies: list[bytes] = []

        async def one() -> None:
            replies.append(await channel.unary_unary("/interop.Echo/Gather", b"100", bytes))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(one)
        assert replies == [b"100"] * 100  # all 100 were in the server's handlers at once
        assert await channel.connection() is connection
