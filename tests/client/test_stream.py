"""``Client.stream`` / ``OperationStream``: plugin-specific stream operations through a real
proxy, with further requests, half-close, errors from the loop and leaving early."""

from __future__ import annotations

import pytest
import trio

import prism.client as pc
from prism._proto.prism.data.v1 import (
    GetResponse,
    Message,
    PublishRequest,
    SubscribeRequest,
)


async def test_stream_results_until_the_plugin_ends_it(client: pc.Client) -> None:
    stream = client.stream("probe", "count", b"4", bytes)
    assert [result async for result in stream] == [b"0", b"1", b"2", b"3"]
    assert stream.status is pc.Status.OK
    assert [r async for r in client.stream("probe", "count", b"0", bytes)] == []


async def test_stream_further_requests_and_half_close(client: pc.Client) -> None:
    async with client.stream("probe", "chat", SubscribeRequest(topic="room"), Message) as chat:
        await chat.send(PublishRequest(payload=b"hi"))
        first = await chat.receive()
        assert first is not None
        assert (first.topic, first.payload, first.sequence) == ("room", b"hi", 1)
        await chat.send(PublishRequest(payload=b"again"))
        await chat.end()
        rest = [(m.payload, m.sequence) async for m in chat]
        assert rest == [(b"again", 2), (b"bye", 3)]
        assert await chat.receive() is None


async def test_stream_further_request_to_an_operation_without_them(client: pc.Client) -> None:
    async with client.stream("probe", "count", b"1000000", bytes) as stream:
        assert await stream.receive() == b"0"
        await stream.send(b"unexpected")
        with pytest.raises(pc.InvalidArgument):
            async for _ in stream:
                pass


async def test_stream_errors_come_out_of_the_loop(client: pc.Client) -> None:
    with pytest.raises(pc.NotFound):
        async for _ in client.stream("nowhere", "subscribe", SubscribeRequest(topic="t"), Message):
            pass
    with pytest.raises(pc.Unimplemented):
        async for _ in client.stream("kv", "no_such_stream", b"", bytes):
            pass
    with pytest.raises(pc.Internal, match="GetResponse"):
        async for _ in client.stream("probe", "count", b"1", GetResponse):
            pass


async def test_stream_left_early_is_cancelled(client: pc.Client) -> None:
    stream = client.stream("probe", "count", b"1000000", bytes)
    async for result in stream:
        assert result == b"0"
        break
    assert stream.status is None  # still open while referenced (dropping it closes it)
    stream.close()
    assert stream.status is pc.Status.CANCELLED
    with trio.move_on_after(0.5) as scope:  # a cancel scope ends a stream as it ends any call
        async for _ in client.stream("probe", "count", b"1000000000", bytes):
            pass
    assert scope.cancelled_caught
