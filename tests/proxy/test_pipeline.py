"""The request pipeline over a real server and socket: every stage is called, in the order the
request path documents, with what it needs; a stage's refusal ends the call with its status and
releases what was taken; health and reflection pass no stage. The stages here record what they
are asked and refuse when told to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio

from prism import grpc as pg
from prism._proto.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from prism._proto.prism.plugin.v1 import ExecuteResponse as PluginResponse
from prism._proto.prism.proxy.v1 import ExecuteRequest, StreamRequest, StreamResponse
from prism.config import NamespaceConfig, PluginConfig
from prism.grpc.health import Health
from prism.grpc.interceptor import CallOutcome
from prism.grpc.reflection import Reflection
from prism.grpc.wire.status import GrpcError, NotFound, Status
from prism.proxy.frontdoor import DataProxyService
from prism.proxy.metrics import NamespaceMetrics, ProxyMetrics
from prism.proxy.pipeline import Breaker, NamespaceStages, NoAuthentication, Pipeline, Route
from prism.proxy.request import Identity, RequestInfo, TraceContext

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"
OK = bytes(PluginResponse(success=True, raw_result=b"result"))
# A metadata map entry, as a tracer appends one (field 4: {"traceparent": "x"}).
TRACED = bytes(ExecuteRequest(metadata={"traceparent": "x"}))
ALICE = Identity("alice", "jwt", claims={"sub": "alice"}, scopes=frozenset({"kv:read"}))


@dataclass
class Log:
    """Everything every stage was asked, in order, and what each should refuse."""

    events: list[str] = field(default_factory=list)
    refuse: dict[str, GrpcError] = field(default_factory=dict)
    infos: list[RequestInfo] = field(default_factory=list)
    outcomes: list[CallOutcome] = field(default_factory=list)
    breaker_statuses: list[Status] = field(default_factory=list)
    free_permits: bool = True

    def hit(self, event: str) -> None:
        self.events.append(event)
        error = self.refuse.get(event)
        if error is not None:
            raise error


class Tracer:
    def __init__(self, log: Log) -> None:
        self.log = log

    def begin(self, call: pg.ServerCall, info: RequestInfo) -> None:
        self.log.hit("trace.begin")
        info.trace = TraceContext("ab" * 16, "cd" * 8)

    def outgoing(self, info: RequestInfo, request: bytes) -> bytes:
        self.log.hit("trace.outgoing")
        return request + TRACED

    def end(self, info: RequestInfo, outcome: CallOutcome) -> None:
        self.log.hit("trace.end")


class Authenticator:
    def __init__(self, log: Log) -> None:
        self.log = log

    async def authenticate(self, call: pg.ServerCall, info: RequestInfo) -> Identity:
        assert info.trace is not None  # tracing ran first
        self.log.hit("authenticate")
        return ALICE


class Audit:
    def __init__(self, log: Log) -> None:
        self.log = log

    def record(self, info: RequestInfo, outcome: CallOutcome) -> None:
        self.log.infos.append(info)
        self.log.outcomes.append(outcome)
        self.log.hit("audit")


class Stages:
    """One namespace's authorizer, rate limiter, limiter and breakers, all recording."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def authorize(self, info: RequestInfo) -> None:
        assert info.identity == ALICE
        assert info.namespace == "kv"
        self.log.hit("authorize")

    def check(self, info: RequestInfo) -> bool:
        self.log.hit("rate")
        return True

    async def wait_for_token(self, info: RequestInfo) -> None:  # never called: check says yes
        await trio.lowlevel.checkpoint()

    def try_acquire(self, info: RequestInfo) -> bool:
        self.log.hit("try_acquire" + (" stream" if info.stream else ""))
        return self.log.free_permits

    async def acquire(self, info: RequestInfo) -> None:
        await trio.lowlevel.checkpoint()
        self.log.hit("acquire")

    def release(self, info: RequestInfo) -> None:
        self.log.hit("release")

    def for_route(self, route: Route) -> Breaker:
        assert route.current == "instance-1"
        self.log.hit("breaker.for_route")
        return self

    def admit(self) -> None:
        self.log.hit("breaker.admit")

    def record(self, status: Status) -> None:
        self.log.breaker_statuses.append(status)
        self.log.hit("breaker.record")


class FakeRoute:
    current = "instance-1"

    def __init__(self, log: Log) -> None:
        self.log = log
        self.behaviour: Callable[[], Awaitable[bytes]] | None = None
        self.requests: list[bytes] = []

    async def execute(self, request: bytes) -> bytes:
        self.log.hit("plugin")
        self.requests.append(request)
        if self.behaviour is not None:
            return await self.behaviour()
        return OK

    async def execute_stream(
        self,
        receive: Callable[[], Awaitable[bytes | None]],
        send: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self.log.hit("plugin stream")
        while (message := await receive()) is not None:
            self.log.hit("stream message")
            self.requests.append(message)
            await send(bytes(StreamResponse(raw_result=StreamRequest.parse(message).raw_params)))


class FakeRouter:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.kv = FakeRoute(log)

    def route(self, namespace: str) -> FakeRoute:
        self.log.hit("route")
        if namespace != "kv":
            raise NotFound(f"unknown namespace {namespace!r}")
        return self.kv


@dataclass
class Door:
    log: Log
    router: FakeRouter
    pipeline: Pipeline
    metrics: ProxyMetrics
    channel: pg.Channel


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    log = Log()
    router = FakeRouter(log)
    metrics = ProxyMetrics()

    def stages(ns: NamespaceConfig, series: NamespaceMetrics) -> NamespaceStages:
        s = Stages(log)
        return NamespaceStages(series, s, s, s, s)

    pipeline = Pipeline(
        router,
        metrics=metrics,
        authenticator=Authenticator(log),
        tracer=Tracer(log),
        audit=Audit(log),
        namespace_stages=stages,
    )
    pipeline.set_namespace(NamespaceConfig("kv", PluginConfig("memstore")))
    server = pg.Server(
        [DataProxyService(router, pipeline), Health()], interceptors=[pipeline.interceptor]
    )
    for service in Reflection.for_server(server).services():
        server.add_service(service)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        async with pg.open_channel(f"{host}:{port}") as channel:
            yield Door(log, router, pipeline, metrics, channel)
        nursery.cancel_scope.cancel()


async def execute(door: Door, namespace: str = "kv", operation: str = "get", **kw: float) -> bytes:
    request = ExecuteRequest(namespace=namespace, operation=operation, raw_params=b"k")
    response: bytes = await door.channel.unary_unary(EXECUTE, request, bytes, **kw)
    return response


async def settled(door: Door) -> None:
    """Until the server's side of the last call is over (its span ended)."""
    with trio.fail_after(10):
        while "trace.end" not in door.log.events:  # noqa: ASYNC110 - the server's own task
            await trio.sleep(0.01)


UNARY_PATH = [
    "trace.begin",
    "authenticate",
    "authorize",
    "rate",
    "try_acquire",
    "route",
    "breaker.for_route",
    "breaker.admit",
    "trace.outgoing",
    "plugin",
    "breaker.record",
    "release",
    "audit",
    "trace.end",
]


async def test_pipeline_runs_every_stage_in_the_documented_order(door: Door) -> None:
    assert await execute(door) == OK
    assert door.log.events == UNARY_PATH
    (info,) = door.log.infos
    assert (info.namespace, info.operation, info.identity, info.stream) == (
        "kv",
        "get",
        ALICE,
        False,
    )
    assert info.trace is not None
    assert info.trace.trace_id == "ab" * 16
    assert info.peer.address.startswith("127.0.0.1:")
    assert door.log.outcomes[0].status == Status.OK
    assert door.log.breaker_statuses == [Status.OK]
    # The plugin got what the tracer made of the request: the metadata entry decodes.
    (forwarded,) = door.router.kv.requests
    decoded = ExecuteRequest.parse(forwarded)
    assert (decoded.namespace, decoded.metadata) == ("kv", {"traceparent": "x"})


async def test_pipeline_waits_for_a_permit_when_none_is_free(door: Door) -> None:
    door.log.free_permits = False
    assert await execute(door) == OK
    assert door.log.events[4:6] == ["try_acquire", "acquire"]
    assert door.log.events.count("release") == 1


@pytest.mark.parametrize(
    ("stage", "error", "taken"),
    [
        ("authenticate", pg.Unauthenticated("no credentials"), []),
        ("authorize", pg.PermissionDenied("kv: get is not allowed"), []),
        ("rate", pg.ResourceExhausted("rate limit"), []),
        ("acquire", pg.ResourceExhausted("queue full"), []),  # no permit: nothing to release
        ("breaker.admit", pg.Unavailable("breaker open"), ["release"]),
    ],
)
async def test_pipeline_refusal_ends_the_call_with_its_status_and_releases_what_was_taken(
    door: Door, stage: str, error: GrpcError, taken: list[str]
) -> None:
    door.log.free_permits = stage != "acquire"
    door.log.refuse[stage] = error
    with pytest.raises(GrpcError) as raised:
        await execute(door)
    assert raised.value.status == error.status
    assert raised.value.message == error.message
    events = door.log.events
    assert "plugin" not in events
    assert [e for e in events if e == "release"] == taken
    # Whatever ended the call, it is audited and its span ended, with the client's status.
    assert events[-2:] == ["audit", "trace.end"]
    assert door.log.outcomes[0].status == error.status
    assert "breaker.record" not in events  # the plugin was not called: nothing to judge it by


async def test_pipeline_authentication_refusal_is_counted_before_the_namespace_is_read(
    door: Door,
) -> None:
    door.log.refuse["authenticate"] = pg.Unauthenticated("no credentials")
    with pytest.raises(pg.Unauthenticated):
        await execute(door)
    (info,) = door.log.infos
    assert (info.namespace, info.operation, info.identity) == ("", "", None)
    requests = door.metrics.requests.children
    assert requests == {("", "", "UNAUTHENTICATED"): requests[("", "", "UNAUTHENTICATED")]}
    assert requests[("", "", "UNAUTHENTICATED")].value == 1


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        ("unavailable", Status.UNAVAILABLE),
        ("internal", Status.INTERNAL),
        ("deadline", Status.DEADLINE_EXCEEDED),
    ],
)
async def test_pipeline_breaker_is_told_how_the_plugin_call_ended(
    door: Door, behaviour: str, status: Status
) -> None:
    async def answer() -> bytes:
        if behaviour == "deadline":
            await trio.sleep_forever()
        return bytes(PluginResponse(success=False, error="backend down", error_code=int(status)))

    door.router.kv.behaviour = answer
    if behaviour == "deadline":
        # The server's deadline only (the namespace's default): with a client deadline too, the
        # client's timer may fire first on a busy machine and reset the stream, and the server
        # would see a cancellation instead.
        # No fail_after around the call for the same reason: the channel would send it as the
        # call's deadline. The default deadline ends the call.
        door.pipeline.namespaces["kv"].default_timeout = 0.2
        with pytest.raises(GrpcError) as raised:
            await execute(door)
    else:
        with pytest.raises(GrpcError) as raised, trio.fail_after(30):
            await execute(door)
    assert raised.value.status == status
    await settled(door)
    assert door.log.breaker_statuses == [status]
    assert door.log.events.count("release") == 1


async def test_pipeline_unknown_namespace_passes_no_namespace_stage(door: Door) -> None:
    with pytest.raises(pg.NotFound, match="unknown namespace 'nope'"):
        await execute(door, namespace="nope")
    assert door.log.events == ["trace.begin", "authenticate", "route", "audit", "trace.end"]
    unknown = door.metrics.requests.children[("_unknown", "_other", "NOT_FOUND")]
    assert unknown.value == 1


async def test_pipeline_health_and_reflection_pass_no_stage(door: Door) -> None:
    door.log.refuse["authenticate"] = pg.Unauthenticated("no credentials")
    health = await door.channel.unary_unary(
        "/grpc.health.v1.Health/Check", HealthCheckRequest(), HealthCheckResponse
    )
    assert health.status == 1  # SERVING
    assert door.log.events == []
    assert door.metrics.requests.children == {}


async def test_pipeline_stream_goes_through_the_stages_once_and_holds_its_permit(
    door: Door,
) -> None:
    async with door.channel.stream(EXECUTE_STREAM, StreamResponse) as stream:
        await stream.send_message(
            bytes(StreamRequest(namespace="kv", operation="upload", raw_params=b"1"))
        )
        assert (await stream.receive_message()).raw_result == b"1"
        await stream.send_message(bytes(StreamRequest(raw_params=b"2")))
        assert (await stream.receive_message()).raw_result == b"2"
        assert "release" not in door.log.events  # the permit is held while the stream lives
        assert door.metrics.namespace("kv").streams.value == 1
        await stream.end()
        assert [r async for r in stream] == []
    await settled(door)
    assert door.log.events == [
        "trace.begin",
        "authenticate",
        "authorize",
        "rate",
        "try_acquire stream",
        "route",
        "breaker.for_route",
        "breaker.admit",
        "trace.outgoing",
        "plugin stream",
        "stream message",
        "stream message",
        "breaker.record",
        "release",
        "audit",
        "trace.end",
    ]
    assert door.log.infos[0].stream
    first, second = door.router.kv.requests  # only the first carries the trace context
    assert StreamRequest.parse(first).raw_params == b"1"
    assert first.endswith(TRACED)
    assert not second.endswith(TRACED)
    assert door.metrics.namespace("kv").streams.value == 0
    assert door.metrics.requests.children[("kv", "upload", "OK")].value == 1
    assert ("kv", "upload") not in door.metrics.request_duration.children  # not a latency


@pytest.mark.parametrize("client_timeout", [None, 30.0])
async def test_pipeline_default_deadline_bounds_only_calls_without_one(
    door: Door, client_timeout: float | None
) -> None:
    stages = door.pipeline.namespaces["kv"]
    stages.default_timeout = 0.05

    async def slow() -> bytes:
        await trio.sleep(0.3)
        return OK

    door.router.kv.behaviour = slow
    # No fail_after around the calls: the channel would send its deadline as grpc-timeout.
    # (Without a default deadline the slow call still ends, after 0.3 s: no hang either way.)
    if client_timeout is None:
        with pytest.raises(pg.DeadlineExceeded):
            await door.channel.unary_unary(
                EXECUTE, ExecuteRequest(namespace="kv", operation="get"), bytes
            )
        await settled(door)
        assert door.log.breaker_statuses == [Status.DEADLINE_EXCEEDED]
    else:  # the client's own deadline wins, even when it is longer
        response = await door.channel.unary_unary(
            EXECUTE,
            ExecuteRequest(namespace="kv", operation="get"),
            bytes,
            timeout=client_timeout,
        )
        assert response == OK


async def test_pipeline_namespaces_come_and_go(door: Door) -> None:
    door.pipeline.remove_namespace("kv")
    assert await execute(door) == OK  # no stages: straight to the route
    assert "authorize" not in door.log.events
    assert all(key[0] != "kv" for key in door.metrics.in_flight.children)
    door.pipeline.set_namespace(NamespaceConfig("kv", PluginConfig("memstore")))
    door.log.events.clear()
    assert await execute(door) == OK
    assert door.log.events == UNARY_PATH


async def test_pipeline_without_its_interceptor_runs_the_namespace_stages() -> None:
    # A DataProxyService on a server of its own (no CallStages): no identity, nothing counted.
    log = Log()
    router = FakeRouter(log)
    seen: list[RequestInfo] = []

    class Recording(Stages):
        def authorize(self, info: RequestInfo) -> None:
            seen.append(info)

    def stages(ns: NamespaceConfig, series: NamespaceMetrics) -> NamespaceStages:
        s = Recording(log)
        return NamespaceStages(series, s, s, s, s)

    pipeline = Pipeline(router, namespace_stages=stages)
    pipeline.set_namespace(NamespaceConfig("kv", PluginConfig("memstore")))
    server = pg.Server([DataProxyService(router, pipeline)])
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        async with pg.open_channel(f"{host}:{port}") as channel:
            request = ExecuteRequest(namespace="kv", operation="get")
            assert await channel.unary_unary(EXECUTE, request, bytes) == OK
        nursery.cancel_scope.cancel()
    assert [(i.namespace, i.identity) for i in seen] == [("kv", None)]
    assert pipeline.metrics.requests.children == {}


async def test_pipeline_runs_the_background_work_of_call_level_stages() -> None:
    class RefreshingAuthenticator(NoAuthentication):
        def __init__(self) -> None:
            self.refreshes = 0

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
            self.refreshes += 1  # the first fetch, before the front door takes calls
            task_status.started()
            while True:
                await trio.sleep(1)
                self.refreshes += 1

    authenticator = RefreshingAuthenticator()
    pipeline = Pipeline(FakeRouter(Log()), authenticator=authenticator)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        assert authenticator.refreshes == 1
        nursery.cancel_scope.cancel()
