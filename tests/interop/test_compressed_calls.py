"""gRPC message compression against real peers, both directions.

grpcio (C core) compresses and decompresses gzip and deflate. grpclib 0.4 has no message
compression: it sends no ``grpc-accept-encoding`` and fails on a compressed message, so with
grpclib what is tested is the negotiation (a compressing prism server must answer it in the
clear), while grpcio covers compressed traffic both ways, unary and streaming.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio
from grpclib.client import Channel as GrpclibChannel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from interop_service import LIMIT, InteropEcho, peer_server

from prism import grpc as pg

GRPCIO_COMPRESSION = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}
# Compressible, and larger than one HTTP/2 frame once compressed or not.
PAYLOAD = b"".join(b"record %06d: some repetitive text;" % i for i in range(4000))


class BytesCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


@asynccontextmanager
async def prism_server(compression: str | None) -> AsyncIterator[int]:
    options = pg.ServerOptions(max_receive_message_size=LIMIT, compression=compression)
    server = pg.Server([InteropEcho()], options)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        yield port
        nursery.cancel_scope.cancel()


def grpcio_calls(port: int, compression: str) -> dict[str, Any]:
    """The four call shapes from grpcio's client, with the channel compressing requests."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}",
        compression=GRPCIO_COMPRESSION[compression],
        options=[("grpc.max_receive_message_length", LIMIT)],
    ) as channel:
        unary = channel.unary_unary("/interop.Echo/Unary")
        reply, call = unary.with_call(PAYLOAD, metadata=[("x-k", "v")], timeout=30)
        stream = list(channel.unary_stream("/interop.Echo/ServerStream")(b"50", timeout=30))
        joined = channel.stream_unary("/interop.Echo/ClientStream")(
            iter([PAYLOAD, b"", PAYLOAD]), timeout=30
        )
        outbox: queue.Queue[bytes | None] = queue.Queue()
        replies = channel.stream_stream("/interop.Echo/Bidi")(iter(outbox.get, None), timeout=30)
        bidi = []
        for word in (b"ping", PAYLOAD):
            outbox.put(word)
            bidi.append(next(replies))
        outbox.put(None)
        assert list(replies) == []
        return {
            "unary": reply,
            "initial": [m for m in call.initial_metadata() if m[0] == "x-k"],
            "stream": stream,
            "joined": joined,
            "bidi": bidi,
        }


@pytest.mark.parametrize("server_compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("client_compression", ["gzip", "deflate"])
async def test_compression_grpcio_client_to_prism_server(
    client_compression: str, server_compression: str | None
) -> None:
    # Before compression was supported, every one of these calls failed with UNIMPLEMENTED.
    async with prism_server(server_compression) as port:
        got = await trio.to_thread.run_sync(grpcio_calls, port, client_compression)
    assert got["unary"] == PAYLOAD
    assert got["initial"] == [("x-k", "v")]
    assert got["stream"] == [b"%d" % i for i in range(50)]
    assert got["joined"] == PAYLOAD * 2
    assert got["bidi"] == [b"PING", PAYLOAD.upper()]


@pytest.fixture(scope="module", params=["gzip", "deflate"])
def compressing_grpcio(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with peer_server("grpcio_server", "--compression", request.param) as target:
        yield target, request.param


@pytest.mark.parametrize("request_compression", [None, "gzip", "deflate"])
async def test_compression_prism_client_to_compressing_grpcio_server(
    compressing_grpcio: tuple[str, str], request_compression: str | None
) -> None:
    # Before, a grpcio server compressing its responses failed every call with "no
    # grpc-encoding was negotiated".
    target, server_encoding = compressing_grpcio
    options = pg.ChannelOptions(max_receive_message_size=LIMIT, compression=request_compression)
    async with pg.open_channel(target, options=options) as channel:
        async with channel.stream("/interop.Echo/Unary", bytes) as call:
            await call.send_message(PAYLOAD)
            await call.end()
            assert await call.receive_single() == PAYLOAD
        assert call.response_encoding == server_encoding
        stream = channel.unary_stream("/interop.Echo/ServerStream", b"50", bytes)
        assert [m async for m in stream] == [b"%d" % i for i in range(50)]
        joined = await channel.stream_unary(
            "/interop.Echo/ClientStream", [PAYLOAD, b"", PAYLOAD], bytes
        )
        assert joined == PAYLOAD * 2
        async with channel.stream("/interop.Echo/Bidi", bytes) as call:
            for word in (b"ping", PAYLOAD):
                await call.send_message(word)
                assert await call.receive_message() == word.upper()
            await call.end()
            assert await call.receive_message() is None
        assert call.response_encoding == server_encoding


@pytest.fixture(scope="module")
def plain_grpcio() -> Iterator[str]:
    with peer_server("grpcio_server") as target:
        yield target


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
async def test_compression_prism_client_compresses_requests_to_grpcio(
    plain_grpcio: str, compression: str
) -> None:
    options = pg.ChannelOptions(max_receive_message_size=LIMIT)
    async with pg.open_channel(plain_grpcio, options=options) as channel:
        reply = await channel.unary_unary(
            "/interop.Echo/Unary", PAYLOAD, bytes, compression=compression
        )
        assert reply == PAYLOAD
        async with channel.stream("/interop.Echo/Bidi", bytes, compression=compression) as call:
            await call.send_message(PAYLOAD)
            assert await call.receive_message() == PAYLOAD.upper()
            await call.send_message(b"clear", compress=False)
            assert await call.receive_message() == b"CLEAR"
            await call.end()
            assert await call.receive_message() is None
        assert call.response_encoding == "identity"  # grpcio was not asked to compress


async def test_compression_prism_server_answers_grpclib_in_the_clear() -> None:
    # grpclib accepts no encoding: a prism server set to compress must not compress for it.
    def calls(port: int) -> tuple[bytes, list[bytes], bytes]:
        async def main() -> tuple[bytes, list[bytes], bytes]:
            channel = GrpclibChannel("127.0.0.1", port, codec=BytesCodec())
            try:
                unary = await _grpclib_unary(channel, "/interop.Echo/Unary", PAYLOAD)
                stream = await _grpclib_stream(channel, b"20")
                bidi = await _grpclib_bidi(channel, [b"ping", PAYLOAD])
            finally:
                channel.close()
            return unary, stream, bidi

        return asyncio.run(main())

    async with prism_server("gzip") as port:
        unary, stream, bidi = await trio.to_thread.run_sync(calls, port)
    assert unary == PAYLOAD
    assert stream == [b"%d" % i for i in range(20)]
    assert bidi == b"PING" + PAYLOAD.upper()


async def _grpclib_unary(channel: GrpclibChannel, method: str, request: bytes) -> bytes:
    async with channel.request(method, Cardinality.UNARY_UNARY, bytes, bytes) as stream:
        await stream.send_message(request, end=True)
        reply = await stream.recv_message()
    assert isinstance(reply, bytes)
    return reply


async def _grpclib_stream(channel: GrpclibChannel, request: bytes) -> list[bytes]:
    method = "/interop.Echo/ServerStream"
    async with channel.request(method, Cardinality.UNARY_STREAM, bytes, bytes) as stream:
        await stream.send_message(request, end=True)
        return [m async for m in stream]


async def _grpclib_bidi(channel: GrpclibChannel, requests: list[bytes]) -> bytes:
    method = "/interop.Echo/Bidi"
    async with channel.request(method, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
        out = b""
        for request in requests:
            await stream.send_message(request)
            reply = await stream.recv_message()
            assert isinstance(reply, bytes)
            out += reply
        await stream.end()
        return out


async def test_compression_prism_client_to_grpclib_server_gets_identity() -> None:
    with peer_server("grpclib_server") as target:
        async with pg.open_channel(target) as channel:
            async with channel.stream("/interop.Echo/Unary", bytes) as call:
                await call.send_message(b"hello")
                await call.end()
                assert await call.receive_single() == b"hello"
            assert call.response_encoding == "identity"
