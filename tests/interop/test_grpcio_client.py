"""grpcio's (C-core) client against prism's server.

The sync grpcio client runs in a worker thread (trio.to_thread) while the prism server runs in
the test's Trio loop. grpcio's client is a demanding peer: it sends 4 MiB windows and large
DATA frames, BDP pings, and grpc-timeout values such as ``201m``.
"""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import trio
from interop_service import LIMIT, InteropEcho

from prism import grpc as pg

T = TypeVar("T")


@asynccontextmanager
async def prism_server(
    max_frame_size: int = 1 << 14,
) -> AsyncIterator[tuple[InteropEcho, grpc.Channel]]:
    """A prism server with the interop service, and a grpcio channel to it."""
    service = InteropEcho()
    options = pg.ServerOptions(max_receive_message_size=LIMIT, max_frame_size=max_frame_size)
    server = pg.Server([service], options)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.max_receive_message_length", LIMIT),
                ("grpc.max_send_message_length", LIMIT),
            ],
        )
        try:
            yield service, channel
        finally:
            await trio.to_thread.run_sync(channel.close)
            nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def unary(channel: grpc.Channel, name: str) -> Any:
    return channel.unary_unary(f"/interop.Echo/{name}")


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(3):
        while not predicate():  # noqa: ASYNC110 (state changed by handlers and threads)
            await trio.sleep(0.01)


async def test_grpcio_client_unary_with_metadata_round_trip() -> None:
    async with prism_server() as (_, channel):
        sent = [("x-token", "abc 123"), ("x-blob-bin", b"\x00\x01\xfe\xff"), ("other", "no")]
        reply, call = await in_thread(
            lambda: unary(channel, "Unary").with_call(b"hello", metadata=sent)
        )
        assert reply == b"hello"
        initial = [(k, v) for k, v in call.initial_metadata() if k.startswith("x-")]
        assert initial == [("x-token", "abc 123"), ("x-blob-bin", b"\x00\x01\xfe\xff")]
        trailing = [(k, v) for k, v in call.trailing_metadata() if k.startswith("trailing-")]
        assert trailing == [
            ("trailing-x-token", "abc 123"),
            ("trailing-x-blob-bin", b"\x00\x01\xfe\xff"),
        ]
        assert call.code() is grpc.StatusCode.OK


async def test_grpcio_client_unary_stream() -> None:
    async with prism_server() as (_, channel):
        stream = channel.unary_stream("/interop.Echo/ServerStream")
        assert await in_thread(lambda: list(stream(b"5"))) == [b"0", b"1", b"2", b"3", b"4"]
        assert await in_thread(lambda: list(stream(b"0"))) == []


async def test_grpcio_client_stream_unary() -> None:
    async with prism_server() as (_, channel):
        client_stream = channel.stream_unary("/interop.Echo/ClientStream")
        parts = [b"a", b"", b"bc", b"d" * 70_000]
        assert await in_thread(lambda: client_stream(iter(parts))) == b"abc" + b"d" * 70_000
        assert await in_thread(lambda: client_stream(iter([]))) == b""


async def test_grpcio_client_stream_stream_interleaves() -> None:
    async with prism_server() as (_, channel):
        bidi = channel.stream_stream("/interop.Echo/Bidi")

        def ping_pong() -> list[bytes]:
            # Each request is only produced after the previous reply arrived.
            outbox: queue.Queue[bytes | None] = queue.Queue()
            replies = bidi(iter(outbox.get, None))
            got = []
            for word in (b"ping", b"pong", b"z" * 100_000):
                outbox.put(word)
                got.append(next(replies))
            outbox.put(None)
            assert list(replies) == []
            return got

        assert await in_thread(ping_pong) == [b"PING", b"PONG", b"Z" * 100_000]


async def test_grpcio_client_status_with_non_ascii_message() -> None:
    message = "schlüssel nicht gefunden: 100% ✓"
    async with prism_server() as (_, channel):
        fail = unary(channel, "Fail")
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: fail(b"5|" + message.encode()))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert info.value.details() == message


async def test_grpcio_client_unimplemented_method() -> None:
    async with prism_server() as (_, channel):
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: unary(channel, "Nope")(b""))
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_grpcio_client_deadline_exceeded() -> None:
    async with prism_server() as (service, channel):
        sleep = unary(channel, "Sleep")
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: sleep(b"", timeout=0.201))  # sent as e.g. "200m"/"201m"
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(lambda: service.cancelled == 1)
        assert service.remaining is not None
        # "201m" understood as 201 ms. Not tighter: grpc core computes the header from a cached
        # clock (it has sent 202m), and a loaded machine may start the handler late.
        assert 0.0 < service.remaining <= 0.21


async def test_grpcio_client_metadata_with_surrounding_spaces() -> None:
    # grpcio sends the value as given. h2's inbound validation used to reject the header block
    # and we answered with GOAWAY(PROTOCOL_ERROR): every call on the connection failed.
    async with prism_server() as (_, channel):
        sent = [("x-padded", " x "), ("x-trailing", "y  ")]
        reply, call = await in_thread(
            lambda: unary(channel, "Unary").with_call(b"hello", metadata=sent)
        )
        assert reply == b"hello"
        # Surrounding whitespace is not part of a field value (RFC 9110 §5.5).
        initial = [(k, v) for k, v in call.initial_metadata() if k.startswith("x-")]
        assert initial == [("x-padded", "x"), ("x-trailing", "y")]
        assert await in_thread(lambda: unary(channel, "Unary")(b"again")) == b"again"


async def test_grpcio_client_long_timeouts_are_understood() -> None:
    async with prism_server() as (service, channel):
        sleep = unary(channel, "Sleep")
        future = await in_thread(lambda: sleep.future(b"", timeout=3600))
        await wait_until(lambda: service.remaining is not None)
        assert service.remaining is not None
        # grpc C-core rounds the grpc-timeout it sends up to a few significant digits: a
        # deadline a hair over 3600 s away goes out as 3610S.
        assert 3590 < service.remaining <= 3610
        future.cancel()
        await wait_until(lambda: service.cancelled == 1)


async def test_grpcio_client_cancellation_mid_stream() -> None:
    async with prism_server() as (service, channel):
        ticks = channel.unary_stream("/interop.Echo/Ticks")

        def three_then_cancel() -> list[bytes]:
            call = ticks(b"")
            got = [next(call) for _ in range(3)]
            call.cancel()
            return got

        assert await in_thread(three_then_cancel) == [b"tick"] * 3
        await wait_until(lambda: service.cancelled == 1)
        assert await in_thread(lambda: unary(channel, "Unary")(b"after")) == b"after"


@pytest.mark.parametrize("max_frame_size", [1 << 14, (1 << 24) - 1], ids=["16k", "16m"])
async def test_grpcio_client_16_mib_messages(max_frame_size: int) -> None:
    # With a 16 MiB SETTINGS_MAX_FRAME_SIZE grpcio sends multi-MiB DATA frames.
    payload = bytes(range(256)) * ((16 << 20) // 256)
    async with prism_server(max_frame_size) as (_, channel):
        assert await in_thread(lambda: unary(channel, "Unary")(payload)) == payload
        bidi = channel.stream_stream("/interop.Echo/Bidi")
        replies = await in_thread(lambda: list(bidi(iter([payload, b"tail"]))))
        assert replies == [payload.upper(), b"TAIL"]


async def test_grpcio_client_100_concurrent_streams_on_one_connection() -> None:
    async with prism_server() as (service, channel):
        gather = unary(channel, "Gather")

        def hundred() -> list[bytes]:
            futures = [gather.future(b"100", timeout=10) for _ in range(100)]
            return [f.result() for f in futures]

        assert await in_thread(hundred) == [b"100"] * 100
        assert len(service.addresses) == 1  # one HTTP/2 connection


async def test_grpcio_client_many_sequential_calls() -> None:
    async with prism_server() as (_, channel):
        echo = unary(channel, "Unary")

        def many() -> Iterator[bytes]:
            for i in range(300):
                yield echo(b"%d" % i)

        assert await in_thread(lambda: list(many())) == [b"%d" % i for i in range(300)]


async def test_grpcio_client_streaming_request_answered_before_half_close() -> None:
    # The server ends the call while grpcio is still streaming requests (then resets the
    # stream with NO_ERROR); grpcio reports the status, and the connection carries on.
    async with prism_server() as (_, channel):
        nope = channel.stream_unary("/interop.Echo/Nope")

        def endless() -> Iterator[bytes]:
            for _ in range(100_000):
                yield b"r" * 1000

        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: nope(endless(), timeout=10))
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert await in_thread(lambda: unary(channel, "Unary")(b"after")) == b"after"


async def test_grpcio_client_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "prism.sock"
    server = pg.Server([InteropEcho()])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_unix, path)
        channel = grpc.insecure_channel(f"unix:{path}")
        try:
            assert await in_thread(lambda: unary(channel, "Unary")(b"via unix")) == b"via unix"
        finally:
            await in_thread(channel.close)
        nursery.cancel_scope.cancel()


async def test_grpcio_client_header_blocks_over_16_kib_both_ways() -> None:
    # A 40,000-character value: HPACK blocks of ~30 KiB, so HEADERS + CONTINUATION frames from
    # grpcio to prism (request) and from prism to grpcio (initial metadata and trailers).
    value = "".join(chr(33 + (i * 7919) % 94) for i in range(40_000)).replace(",", ";")
    options = pg.ServerOptions(max_header_list_size=256 << 10)
    server = pg.Server([InteropEcho()], options)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_metadata_size", 256 << 10)]
        )
        try:
            reply, call = await in_thread(
                lambda: unary(channel, "Unary").with_call(b"big", metadata=[("x-big", value)])
            )
        finally:
            await trio.to_thread.run_sync(channel.close)
            nursery.cancel_scope.cancel()
    assert reply == b"big"
    assert dict(call.initial_metadata())["x-big"] == value
    assert dict(call.trailing_metadata())["trailing-x-big"] == value
