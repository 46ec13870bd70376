"""The front door over a real server and socket, with routes that answer canned bytes: what it
forwards, and how plugin failures become gRPC statuses; and, through a real proxy and plugin in
each deployment model, that clients cannot call the SDK's reserved operations."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
from host_testkit import RemoteService, namespace, proxy_config, remote_service, running_proxy

from prism import grpc as pg
from prism._proto.prism.data.v1 import SetRequest
from prism._proto.prism.plugin.v1 import ExecuteResponse as PluginResponse
from prism._proto.prism.plugin.v1 import PluginMetrics
from prism._proto.prism.proxy.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
)
from prism.grpc.wire.status import GrpcError, NotFound, Status
from prism.proxy.frontdoor import DataProxyService, check_response
from prism.sdk import METRICS_OPERATION
from prism.sdk.typed import pack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"


class FakeRoute:
    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.streamed: list[bytes] = []

    async def execute(self, request: bytes) -> bytes:
        self.requests.append(request)
        return self.answer

    async def execute_stream(
        self,
        receive: Callable[[], Awaitable[bytes | None]],
        send: Callable[[bytes], Awaitable[None]],
    ) -> None:
        while (message := await receive()) is not None:
            self.streamed.append(message)
            await send(bytes(StreamResponse(raw_result=StreamRequest.parse(message).raw_params)))


class FakeRouter:
    def __init__(self) -> None:
        self.routes: dict[str, FakeRoute] = {}

    def route(self, namespace: str) -> FakeRoute:
        try:
            return self.routes[namespace]
        except KeyError:
            raise NotFound(f"unknown namespace {namespace!r}") from None


@pytest.fixture
async def door(nursery: trio.Nursery) -> AsyncIterator[tuple[FakeRouter, pg.Channel]]:
    router = FakeRouter()
    server = pg.Server([DataProxyService(router)])
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    async with pg.open_channel(f"{host}:{port}") as channel:
        yield router, channel


async def call(channel: pg.Channel, request: ExecuteRequest | bytes) -> bytes:
    response: bytes = await channel.unary_unary(EXECUTE, request, bytes)
    return response


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Status.NOT_FOUND, pg.NotFound),
        (Status.RESOURCE_EXHAUSTED, pg.ResourceExhausted),
        (Status.FAILED_PRECONDITION, pg.FailedPrecondition),
        (Status.UNAVAILABLE, pg.Unavailable),
    ],
)
async def test_frontdoor_plugin_error_code_becomes_the_status(
    door: tuple[FakeRouter, pg.Channel], code: Status, status: type[GrpcError]
) -> None:
    router, channel = door
    router.routes["kv"] = FakeRoute(
        bytes(PluginResponse(success=False, error="no key 'a'", error_code=int(code)))
    )
    with pytest.raises(status, match="no key 'a'") as info:
        await call(channel, ExecuteRequest(namespace="kv", operation="get"))
    assert info.value.status == code


async def test_frontdoor_plugin_failure_without_code_is_unknown(
    door: tuple[FakeRouter, pg.Channel],
) -> None:
    router, channel = door
    router.routes["kv"] = FakeRoute(bytes(PluginResponse(success=False, error="it broke")))
    with pytest.raises(GrpcError, match="it broke") as info:
        await call(channel, ExecuteRequest(namespace="kv", operation="get"))
    assert info.value.status == Status.UNKNOWN
    router.routes["kv"] = FakeRoute(bytes(PluginResponse(success=False)))
    with pytest.raises(GrpcError, match="the plugin reported a failure") as info:
        await call(channel, ExecuteRequest(namespace="kv", operation="get"))
    assert info.value.status == Status.UNKNOWN


def test_frontdoor_check_response_maps_codes() -> None:
    ok = bytes(PluginResponse(success=True, raw_result=b"r"))
    assert check_response(ok) is ok
    with pytest.raises(GrpcError) as info:
        check_response(bytes(PluginResponse(success=False, error="odd", error_code=999)))
    assert info.value.status == Status.UNKNOWN
    assert "odd" in info.value.message
    with pytest.raises(GrpcError) as info:
        check_response(bytes(PluginResponse(success=False, error="x", error_code=0)))
    assert info.value.status == Status.UNKNOWN
    with pytest.raises(pg.InvalidArgument):
        check_response(b"\x0a\x05ab")  # a malformed plugin response


def test_frontdoor_check_response_reads_past_a_success_that_fields_follow() -> None:
    """A response that starts as the SDK's successes do is taken as one only when its result
    runs to the end: a later field (here ``success`` again, false) still counts."""
    typed = bytes(PluginResponse(success=True, typed_result=pack(SetRequest(key="k" * 200))))
    assert check_response(typed) is typed  # a result longer than 127 bytes: a 2-byte length
    overridden = typed + bytes(PluginResponse(error="late", error_code=int(Status.ABORTED)))
    with pytest.raises(GrpcError) as info:
        check_response(overridden + b"\x08\x00")
    assert (info.value.status, info.value.message) == (Status.ABORTED, "late")
    with pytest.raises(pg.InvalidArgument):
        check_response(b"\x08\x01\x2a\x05ab")  # its result runs past the end


async def test_frontdoor_forwards_request_and_response_bytes_unchanged(
    door: tuple[FakeRouter, pg.Channel],
) -> None:
    router, channel = door
    answer = bytes(
        PluginResponse(
            success=True,
            raw_result=b"payload",
            metrics=PluginMetrics(requests_total=3),
        )
    )
    router.routes["kv"] = FakeRoute(answer)
    request = (
        bytes(ExecuteRequest(namespace="kv", operation="get", raw_params=b"\x00" * 100))
        + b"\xa2\x06\x03xyz"
    )  # plus a field (100) nobody here knows: forwarded all the same
    assert await call(channel, request) == answer
    assert router.routes["kv"].requests == [request]
    # The client reads the plugin's response as the proxy API's: success etc. are reserved.
    assert ExecuteResponse.parse(answer).raw_result == b"payload"


async def test_frontdoor_refuses_requests_it_cannot_route(
    door: tuple[FakeRouter, pg.Channel],
) -> None:
    router, channel = door
    router.routes["kv"] = FakeRoute(bytes(PluginResponse(success=True)))
    with pytest.raises(pg.InvalidArgument, match="namespace is required"):
        await call(channel, ExecuteRequest(operation="get"))
    with pytest.raises(pg.InvalidArgument, match="operation is required"):
        await call(channel, ExecuteRequest(namespace="kv"))
    with pytest.raises(pg.NotFound, match="unknown namespace 'nope'"):
        await call(channel, ExecuteRequest(namespace="nope", operation="get"))
    with pytest.raises(pg.InvalidArgument, match="malformed protobuf"):
        await call(channel, b"\x0a\x05ab")
    with pytest.raises(pg.InvalidArgument, match="not valid UTF-8"):
        await call(channel, b"\x7a\x02\xff\xfe\x0a\x01g")
    assert router.routes["kv"].requests == []


async def test_frontdoor_stream_forwards_every_request_in_order(
    door: tuple[FakeRouter, pg.Channel],
) -> None:
    router, channel = door
    router.routes["kv"] = FakeRoute(b"")
    messages = [
        bytes(StreamRequest(namespace="kv", operation="upload", raw_params=b"one")),
        bytes(StreamRequest(raw_params=b"two")),
        bytes(StreamRequest(raw_params=b"six")),
    ]
    async with channel.stream(EXECUTE_STREAM, StreamResponse) as stream:
        for message in messages:
            await stream.send_message(message)
        await stream.end()
        responses = [r.raw_result async for r in stream]
    assert responses == [b"one", b"two", b"six"]
    assert router.routes["kv"].streamed == messages


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (None, "the stream ended before its first request"),
        (StreamRequest(operation="subscribe"), "namespace is required"),
        (StreamRequest(namespace="kv"), "must name its operation"),
    ],
)
async def test_frontdoor_stream_refuses_a_bad_first_request(
    door: tuple[FakeRouter, pg.Channel], first: StreamRequest | None, error: str
) -> None:
    router, channel = door
    router.routes["kv"] = FakeRoute(b"")

    async def run() -> None:
        async with channel.stream(EXECUTE_STREAM, StreamResponse) as stream:
            if first is not None:
                await stream.send_message(first)
            await stream.end()
            async for _ in stream:
                pass

    with pytest.raises(pg.InvalidArgument, match=error):
        await run()


async def read_until_error(stream: pg.ClientCall) -> tuple[int, GrpcError]:
    """How many messages came before the stream's error, and the error."""
    received = 0
    try:
        async for _ in stream:
            received += 1
    except GrpcError as exc:
        return received, exc
    raise AssertionError(f"the stream ended with OK after {received} messages")


class CuttingRoute:
    """Streams 8 KiB results until the test cuts it off, then ends with RESOURCE_EXHAUSTED, as
    a pub/sub plugin does with a subscriber that fell behind."""

    SIZE = 8 << 10

    def __init__(self, enough: int) -> None:
        self.sent = 0
        self.enough = enough
        self.reached = trio.Event()  # `enough` results are queued or gone
        self.cut = trio.CancelScope()

    async def execute(self, request: bytes) -> bytes:
        raise AssertionError("unused")

    async def execute_stream(
        self,
        receive: Callable[[], Awaitable[bytes | None]],
        send: Callable[[bytes], Awaitable[None]],
    ) -> None:
        with self.cut:
            while True:
                await send(bytes(StreamResponse(raw_result=b"r" * self.SIZE)))
                self.sent += 1
                if self.sent == self.enough:
                    self.reached.set()
        raise pg.ResourceExhausted("fell behind and was cut off")


async def test_frontdoor_stream_cut_with_resource_exhausted_drops_what_is_queued(
    nursery: trio.Nursery,
) -> None:
    window = 65535
    router = FakeRouter()
    # 1 MiB of results, ~16 times what the client's windows take: the proxy holds the rest
    # back (and blocks the route only beyond that).
    route = CuttingRoute(enough=(1 << 20) // CuttingRoute.SIZE)
    router.routes["ps"] = route  # type: ignore[assignment]
    server = pg.Server([DataProxyService(router)])
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    options = pg.ChannelOptions(initial_window_size=window, connection_window_size=window)
    with trio.fail_after(60):  # catches a hang, not a speed
        async with (
            pg.open_channel(f"{host}:{port}", options=options) as channel,
            channel.stream(EXECUTE_STREAM, StreamResponse) as stream,
        ):
            await stream.send_message(StreamRequest(namespace="ps", operation="subscribe"))
            await route.reached.wait()  # the client has not read anything yet
            route.cut.cancel()
            await stream.wait_ended()  # the proxy ends the stream without waiting for a read
            received, error = await read_until_error(stream)
    assert isinstance(error, pg.ResourceExhausted)
    # The route's message, unless the proxy had to reset the stream because a message was
    # half-sent (ServerCall.end_at_once): RST_STREAM(ENHANCE_YOUR_CALM) carries none.
    assert error.message in {
        "fell behind and was cut off",
        "stream reset by the server (ENHANCE_YOUR_CALM)",
    }
    # What the client took in before its flow control stopped the proxy (prism's client keeps
    # acknowledging while less than a window waits to be read: 2-3 windows all told) and the
    # rest of one message; not the ~110 messages more the proxy held back.
    assert received <= 3 * window // CuttingRoute.SIZE + 1
    assert route.sent >= route.enough


@pytest.mark.parametrize("operation", [METRICS_OPERATION, "_prism.anything"])
async def test_frontdoor_refuses_reserved_operations_before_routing(
    door: tuple[FakeRouter, pg.Channel], operation: str
) -> None:
    router, channel = door
    router.routes["kv"] = FakeRoute(bytes(PluginResponse(success=True)))
    with pytest.raises(pg.PermissionDenied, match=f"{operation!r} is reserved for the proxy"):
        await call(channel, ExecuteRequest(namespace="kv", operation=operation))
    async with channel.stream(EXECUTE_STREAM, StreamResponse) as stream:
        await stream.send_message(StreamRequest(namespace="kv", operation=operation))
        await stream.end()
        with pytest.raises(pg.PermissionDenied, match="reserved for the proxy"):
            async for _ in stream:
                pass
    assert router.routes["kv"].requests == []
    assert router.routes["kv"].streamed == []


@pytest.mark.parametrize("mode", ["in_process", "sidecar", "remote"])
async def test_frontdoor_reserved_operations_never_reach_a_real_plugin(
    mode: str, tmp_path: Path
) -> None:
    """``_prism.metrics`` fetches and resets a plugin's counters: a client that could call it
    would read them and leave the host's next poll with nothing."""
    with contextlib.ExitStack() as stack:
        if mode == "remote":
            remote: RemoteService = stack.enter_context(remote_service(tmp_path))
            ns = remote.namespace("kv", health_interval=3600)
        else:
            ns = namespace("kv", "memstore", mode, health_interval=3600)  # no poll of its own
        with trio.fail_after(60):
            async with running_proxy(proxy_config(ns)) as running:
                for i in range(3):
                    await running.execute("kv", "set", SetRequest(key=f"k{i}", value=b"v"))
                for operation in (METRICS_OPERATION, "_prism.anything"):
                    with pytest.raises(pg.PermissionDenied, match="reserved for the proxy"):
                        await running.execute("kv", operation)
                    async with running.channel.stream(EXECUTE_STREAM, StreamResponse) as stream:
                        await stream.send_message(
                            StreamRequest(namespace="kv", operation=operation)
                        )
                        with pytest.raises(pg.PermissionDenied, match="reserved for the proxy"):
                            await stream.receive_message()
                instance = running.proxy.host.route("kv").current
                assert instance is not None
                metrics = await instance.poll_metrics()  # the host's own path still works
                assert metrics is not None
                assert (metrics.requests_total, metrics.requests_failed) == (3, 0)
