"""prism.grpc.call: ServerCall.end_at_once ends a stream now, past a client that stopped
reading: trailers when no message is half-sent, RST_STREAM(ENHANCE_YOUR_CALM) otherwise."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import h2.errors
import h2.events
import pytest
import trio
from grpc_testkit import RawClient, grpc_frame, serving
from grpclib.client import Channel as GrpclibChannel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import StreamTerminatedError

from prism import grpc as pg

BIG = 32 << 20  # one message no client window takes whole while nobody reads


class Cut(pg.Service):
    """Handlers that queue more than the client has room for, then end the call at once."""

    name = "test.Cut"

    def __init__(self) -> None:
        self.reset: bool | None = None
        self.done = threading.Event()  # a grpcio client's thread waits on it

    async def _cut(self, call: pg.ServerCall) -> None:
        error = pg.ResourceExhausted("cut off")
        self.reset = call.end_at_once(error)
        self.done.set()
        raise error

    @pg.unary_stream("Boundary", bytes, bytes)
    async def boundary(self, request: bytes, call: pg.ServerCall) -> None:
        # 51 of these 1,285-byte frames fill a 65,535-byte window exactly: nothing half-sent.
        call.set_trailing_metadata([("cut-by", "test")])
        for _ in range(200):
            await call.send_message(b"b" * 1280)
        await self._cut(call)

    @pg.unary_stream("Midway", bytes, bytes)
    async def midway(self, request: bytes, call: pg.ServerCall) -> None:
        # 1,005-byte frames: the window's last 210 bytes are the start of a message.
        for _ in range(200):
            await call.send_message(b"m" * 1000)
        await self._cut(call)

    @pg.unary_stream("Big", bytes, bytes)
    async def big(self, request: bytes, call: pg.ServerCall) -> None:
        # One message: once any of it went out and some is still held back, it is half-sent.
        await call.send_message(b"g" * BIG)
        conn = call._connection.conn  # what flow control holds back for this stream
        while not 0 < conn.pending(call.stream_id) < BIG:  # noqa: ASYNC110 (no event for it)
            await trio.sleep(0.01)
        await self._cut(call)


async def test_call_end_at_once_sends_the_trailers_when_nothing_is_half_sent() -> None:
    service = Cut()
    async with serving(service) as (_, target), RawClient.connect(target) as client:
        sid = await client.call("/test.Cut/Boundary", b"")  # never sends WINDOW_UPDATE
        with trio.fail_after(30):  # catches a hang, not a speed
            await client.until(lambda: client.ended(sid))
        trailers = client.trailers(sid)
        assert trailers[b"grpc-status"] == b"%d" % pg.Status.RESOURCE_EXHAUSTED
        assert trailers[b"grpc-message"] == b"cut off"
        assert trailers[b"cut-by"] == b"test"
        data = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
        assert data == grpc_frame(b"b" * 1280) * 51
        assert not client.of(h2.events.StreamReset, sid)
    assert service.reset is False


async def test_call_end_at_once_resets_a_stream_with_a_message_half_sent() -> None:
    service = Cut()
    async with serving(service) as (_, target), RawClient.connect(target) as client:
        sid = await client.call("/test.Cut/Midway", b"")
        with trio.fail_after(30):  # catches a hang, not a speed
            await client.until(lambda: bool(client.of(h2.events.StreamReset, sid)))
        [reset] = client.of(h2.events.StreamReset, sid)
        assert reset.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert not client.of(h2.events.TrailersReceived, sid)
        data = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
        assert data == grpc_frame(b"m" * 1000) * 65 + grpc_frame(b"m" * 1000)[:210]
    assert service.reset is True


async def test_call_end_at_once_reset_is_resource_exhausted_to_grpcio() -> None:
    service = Cut()

    def subscribe(target: str) -> grpc.StatusCode:
        options = [("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(target, options=options) as channel:
            responses = channel.unary_stream("/test.Cut/Big")(b"", timeout=60)
            # Not reading until the server has ended the call: the message stays half-sent.
            if not service.done.wait(60):
                raise AssertionError("the handler never ended the call")
            try:
                for _ in responses:
                    pass
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined,no-any-return]
            raise AssertionError("the call ended OK")

    options = pg.ServerOptions(initial_window_size=2 * BIG)  # send_message need not wait
    async with serving(service, options=options) as (_, target):
        with trio.fail_after(90):  # catches a hang, not a speed
            code = await trio.to_thread.run_sync(subscribe, target)
    assert service.reset is True
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_call_end_at_once_reset_is_resource_exhausted_to_prism() -> None:
    service = Cut()
    options = pg.ChannelOptions(max_receive_message_size=2 * BIG)
    async with (
        serving(service, options=pg.ServerOptions(initial_window_size=2 * BIG)) as (_, target),
        pg.open_channel(target, options=options) as channel,
        channel.stream("/test.Cut/Big", bytes) as call,
    ):
        await call.send_message(b"")
        await call.end()
        with trio.fail_after(30):  # catches a hang, not a speed
            await call.wait_ended()  # without reading: the status is in already
            with pytest.raises(pg.ResourceExhausted) as caught:
                await call.receive_message()
    assert caught.value.message == "stream reset by the server (ENHANCE_YOUR_CALM)"
    assert service.reset is True


class _Bytes(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


async def test_call_end_at_once_reset_is_stream_terminated_to_grpclib() -> None:
    # grpclib 0.4 maps no RST_STREAM code to a status (gRPC's HTTP/2 mapping has
    # ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED): its caller sees the reset and its code.
    service = Cut()

    def subscribe(port: int) -> str:
        async def main() -> str:
            channel = GrpclibChannel("127.0.0.1", port, codec=_Bytes())
            method = "/test.Cut/Big"
            try:
                async with channel.request(method, Cardinality.UNARY_STREAM, bytes, bytes) as call:
                    await call.send_message(b"", end=True)
                    loop = asyncio.get_running_loop()
                    if not await loop.run_in_executor(None, service.done.wait, 60):
                        raise AssertionError("the handler never ended the call")
                    await call.recv_message()
            except StreamTerminatedError as exc:
                return str(exc)
            finally:
                channel.close()
            raise AssertionError("a message came through whole")

        return asyncio.run(main())

    options = pg.ServerOptions(initial_window_size=2 * BIG)
    async with serving(service, options=options) as (_, target):
        with trio.fail_after(90):  # catches a hang, not a speed
            message = await trio.to_thread.run_sync(subscribe, int(target.rsplit(":", 1)[1]))
    assert service.reset is True
    assert message == "Stream reset by remote party, error_code: 11"
