"""prism.sdk.shared: one result sent on many streams, encoded once, on every path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from prism._proto.prism.data.v1 import GetResponse, Message
from prism._proto.prism.plugin.v1 import StreamRequest, StreamResponse
from prism.sdk import (
    BackendPlugin,
    Internal,
    OperationStream,
    PluginInstance,
    SharedResult,
    open_plugin,
    pack,
    stream_operation,
    unpack,
)
from prism.sdk.plugin import Payload


class FanOutPlugin(BackendPlugin):
    """Every stream sends the results the test put in ``shared``."""

    name = "fanout"

    def __init__(self) -> None:
        super().__init__()
        self.shared: list[SharedResult] = []

    @stream_operation("feed", params=bytes, result=Message)
    async def feed(self, params: bytes, stream: OperationStream) -> None:
        for result in self.shared:
            await stream.send(result)

    @stream_operation("raw_feed", params=bytes, result=bytes)
    async def raw_feed(self, params: bytes, stream: OperationStream) -> None:
        for result in self.shared:
            await stream.send(result)


@pytest.fixture
async def fanout() -> AsyncIterator[PluginInstance]:
    async with open_plugin(FanOutPlugin()) as instance:
        await instance.setup(None, {}, "ns")
        yield instance


def plugin_of(instance: PluginInstance) -> FanOutPlugin:
    assert isinstance(instance.plugin, FanOutPlugin)
    return instance.plugin


async def stream_bytes(instance: PluginInstance, operation: str) -> list[bytes]:
    """One stream on the encoded path (the sidecar's server, the in-process host): the bytes
    it sent, the final response included."""
    requests = [bytes(StreamRequest(operation=operation))]
    sent: list[bytes] = []

    async def receive() -> bytes | None:
        await trio.lowlevel.checkpoint()
        return requests.pop() if requests else None

    async def send(data: bytes) -> None:
        sent.append(data)

    await instance.execute_stream_encoded(receive, send)
    return sent


async def test_shared_result_is_encoded_once_for_every_stream(fanout: PluginInstance) -> None:
    messages = [
        Message(topic="t", payload=b"p" * 100, headers={"h": "v"}, sequence=i) for i in (1, 2)
    ]
    plugin_of(fanout).shared = [SharedResult(m) for m in messages]
    streams = [await stream_bytes(fanout, "feed") for _ in range(3)]
    for sent in streams:
        # What betterproto2 writes for the same StreamResponse, then the final one.
        assert sent == [bytes(StreamResponse(typed_result=pack(m))) for m in messages] + [
            bytes(StreamResponse(is_final=True))
        ]
        assert [unpack(StreamResponse.parse(d).typed_result, Message) for d in sent[:2]] == messages
    # The very same bytes objects on every stream: encoded once, not once per stream.
    for i in range(2):
        assert all(sent[i] is streams[0][i] for sent in streams)


@pytest.mark.parametrize("raw", [b"", b"raw bytes"])
async def test_shared_raw_result_is_raw_result(fanout: PluginInstance, raw: bytes) -> None:
    plugin_of(fanout).shared = [SharedResult(raw)]
    sent = await stream_bytes(fanout, "raw_feed")
    assert sent[0] == bytes(StreamResponse(raw_result=raw))
    assert StreamResponse.parse(sent[0]).raw_result == raw


async def test_shared_result_on_the_message_and_typed_paths(fanout: PluginInstance) -> None:
    message = Message(topic="t", payload=b"x", sequence=7)
    plugin_of(fanout).shared = [SharedResult(message)]
    responses: list[StreamResponse] = []
    requests = [StreamRequest(operation="feed")]

    async def receive() -> StreamRequest | None:
        await trio.lowlevel.checkpoint()
        return requests.pop() if requests else None

    async def send(response: StreamResponse) -> None:
        responses.append(response)

    await fanout.execute_stream(receive, send)
    assert unpack(responses[0].typed_result, Message) == message
    results: list[Payload] = []

    async def collect(result: Payload) -> None:
        results.append(result)

    await fanout.call_stream("feed", b"", collect)
    assert results == [message]
    assert results[0] is message  # the typed path passes the object itself


async def test_shared_result_of_the_wrong_type_is_internal(fanout: PluginInstance) -> None:
    plugin_of(fanout).shared = [SharedResult(GetResponse(found=True))]
    with pytest.raises(
        Internal, match=r"sent prism\.data\.v1\.GetResponse, but declares prism\.data\.v1\.Message"
    ):
        await stream_bytes(fanout, "feed")


def test_shared_result_takes_only_payloads() -> None:
    with pytest.raises(TypeError, match="bytes or a message"):
        SharedResult("text")  # type: ignore[arg-type]
