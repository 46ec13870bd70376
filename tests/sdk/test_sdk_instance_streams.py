"""prism.sdk.instance: ExecuteStream on the RFC's messages, on their bytes, and on the typed
path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing
from sdk_plugins import SECRET, WidgetConfig, WidgetPlugin

from prism._proto.prism.data.v1 import GetRequest, Message, PublishRequest, SubscribeRequest
from prism._proto.prism.plugin.v1 import StreamRequest, StreamResponse
from prism.sdk import (
    FailedPrecondition,
    GrpcError,
    InvalidArgument,
    PluginInstance,
    Unimplemented,
    open_plugin,
    pack,
    unpack,
)
from prism.sdk.instance import Payload


@pytest.fixture
async def widget() -> AsyncIterator[PluginInstance]:
    async with open_plugin(WidgetPlugin()) as instance:
        await instance.setup(WidgetConfig(path="/data"), {"password": SECRET}, "ns")
        yield instance


Receive = Callable[[], Awaitable[StreamRequest | None]]
Run = Callable[[Receive, "Sink"], Awaitable[None]]


def runner(instance: PluginInstance, path: str) -> Run:
    """``execute_stream`` on messages, or ``execute_stream_encoded`` on their bytes (what the
    sidecar's server and the in-process host use), behind one signature."""
    if path == "messages":
        return instance.execute_stream

    async def encoded(receive: Receive, sink: Sink) -> None:
        async def receive_bytes() -> bytes | None:
            request = await receive()
            return None if request is None else bytes(request)

        async def send_bytes(data: bytes) -> None:
            await sink(StreamResponse.parse(data))

        await instance.execute_stream_encoded(receive_bytes, send_bytes)

    return encoded


@pytest.fixture(params=["messages", "encoded"])
def run(request: pytest.FixtureRequest, widget: PluginInstance) -> Run:
    return runner(widget, request.param)


def source(*requests: StreamRequest) -> Callable[[], Awaitable[StreamRequest | None]]:
    """A client that sends ``requests`` and then half-closes."""
    pending = list(requests)

    async def receive() -> StreamRequest | None:
        await trio.lowlevel.checkpoint()
        return pending.pop(0) if pending else None

    return receive


class Sink:
    def __init__(self) -> None:
        self.responses: list[StreamResponse] = []

    async def __call__(self, response: StreamResponse) -> None:
        self.responses.append(response)

    def messages(self) -> list[Message]:
        return [unpack(r.typed_result, Message) for r in self.responses if r.typed_result]


def publish(payload: bytes) -> StreamRequest:
    return StreamRequest(typed_params=pack(PublishRequest(topic="ignored", payload=payload)))


async def test_stream_handles_further_requests_and_ends_with_is_final(run: Run) -> None:
    sink = Sink()
    opening = StreamRequest(operation="chat", typed_params=pack(SubscribeRequest(topic="t")))
    await run(source(opening, publish(b"a"), publish(b"b")), sink)
    assert [(m.payload, m.sequence) for m in sink.messages()] == [(b"a", 1), (b"b", 2), (b"bye", 3)]
    assert sink.responses[-1] == StreamResponse(is_final=True)
    assert all(not r.is_final for r in sink.responses[:-1])


async def test_stream_raw_results(run: Run) -> None:
    sink = Sink()
    await run(source(StreamRequest(operation="count", raw_params=b"2")), sink)
    assert [r.raw_result for r in sink.responses] == [b"0", b"1", None]


async def test_stream_error_is_raised_for_the_call_status(run: Run) -> None:
    sink = Sink()
    opening = StreamRequest(operation="chat", typed_params=pack(SubscribeRequest(topic="t")))
    with pytest.raises(InvalidArgument, match="asked to fail"):
        await run(source(opening, publish(b"fail"), publish(b"never")), sink)
    assert [m.payload for m in sink.messages()] == [b"fail"]
    assert not any(r.is_final for r in sink.responses)


async def test_stream_without_requests_is_invalid_argument(run: Run) -> None:
    with pytest.raises(InvalidArgument, match="before its first request"):
        await run(source(), Sink())


async def test_stream_further_request_of_wrong_type_is_invalid_argument(run: Run) -> None:
    opening = StreamRequest(operation="chat", typed_params=pack(SubscribeRequest(topic="t")))
    wrong = StreamRequest(typed_params=pack(GetRequest(key="k")))
    with pytest.raises(InvalidArgument, match=r"request: expected prism\.data\.v1\.PublishRequest"):
        await run(source(opening, wrong), Sink())


async def test_stream_further_request_naming_another_operation_is_invalid_argument(
    run: Run,
) -> None:
    opening = StreamRequest(operation="chat", typed_params=pack(SubscribeRequest(topic="t")))
    other = StreamRequest(operation="get", typed_params=pack(PublishRequest()))
    with pytest.raises(InvalidArgument, match="got a request for 'get'"):
        await run(source(opening, other), Sink())


async def test_stream_operation_without_inbound_rejects_further_requests(run: Run) -> None:
    opening = StreamRequest(operation="wait_for_close", raw_params=b"")
    with pytest.raises(InvalidArgument, match="takes no requests after the first"):
        await run(source(opening, StreamRequest(raw_params=b"x")), Sink())


async def test_stream_operation_without_inbound_sees_half_close(run: Run) -> None:
    sink = Sink()
    await run(source(StreamRequest(operation="wait_for_close")), sink)
    assert [r.raw_result for r in sink.responses] == [b"client closed", None]


async def test_stream_unknown_and_unary_operations_are_unimplemented(run: Run) -> None:
    with pytest.raises(Unimplemented, match="'nope'"):
        await run(source(StreamRequest(operation="nope")), Sink())
    with pytest.raises(Unimplemented, match="called by Execute"):
        await run(source(StreamRequest(operation="echo_raw")), Sink())


@pytest.mark.parametrize("path", ["messages", "encoded"])
async def test_stream_before_initialize_is_failed_precondition(path: str) -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        with pytest.raises(FailedPrecondition):
            await runner(instance, path)(source(StreamRequest(operation="count")), Sink())


async def test_stream_counts_once_in_metrics_without_latency(
    widget: PluginInstance, run: Run
) -> None:
    widget.metrics()
    await run(source(StreamRequest(operation="count", raw_params=b"5")), Sink())
    with pytest.raises(GrpcError):
        await run(source(StreamRequest(operation="nope")), Sink())
    metrics = widget.metrics()
    assert (metrics.requests_total, metrics.requests_failed, metrics.latency_ms) == (2, 1, 0.0)


async def test_stream_typed_path_passes_objects(widget: PluginInstance) -> None:
    results: list[Payload] = []
    inbound = [PublishRequest(payload=b"x")]

    async def send(result: Payload) -> None:
        results.append(result)

    async def receive() -> Payload | None:
        return inbound.pop() if inbound else None

    await widget.call_stream("chat", SubscribeRequest(topic="t"), send, receive)
    assert results == [
        Message(topic="t", payload=b"x", sequence=1),
        Message(topic="t", payload=b"bye", sequence=2),
    ]


async def test_stream_typed_path_checks_types(widget: PluginInstance) -> None:
    async def send(result: Payload) -> None:
        pass

    async def receive() -> Payload | None:
        return GetRequest()

    with pytest.raises(InvalidArgument, match=r"expects params prism\.data\.v1\.SubscribeRequest"):
        await widget.call_stream("chat", b"raw", send)
    with pytest.raises(InvalidArgument, match=r"expects request prism\.data\.v1\.PublishRequest"):
        await widget.call_stream("chat", SubscribeRequest(), send, receive)


async def test_stream_cancelled_by_the_client_ends_quietly(
    widget: PluginInstance, run: Run
) -> None:
    gate = trio.Event()

    async def never_closes() -> StreamRequest | None:
        await gate.wait()
        return None

    first = True

    async def receive() -> StreamRequest | None:
        nonlocal first
        if first:
            first = False
            return StreamRequest(operation="wait_for_close")
        return await never_closes()

    widget.metrics()
    with trio.move_on_after(0.01) as scope:
        await run(receive, Sink())
    assert scope.cancelled_caught
    assert widget.metrics().requests_failed == 0


async def test_stream_encoded_malformed_request_is_invalid_argument(
    widget: PluginInstance,
) -> None:
    async def receive() -> bytes | None:
        return b"\x0a\x05ab"  # operation: 5 bytes announced, 2 there

    async def send(data: bytes) -> None:
        raise AssertionError("nothing to send")

    with pytest.raises(InvalidArgument, match="malformed protobuf"):
        await widget.execute_stream_encoded(receive, send)
