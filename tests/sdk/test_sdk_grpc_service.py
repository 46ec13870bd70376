"""A remote plugin service (``serve_plugin(..., listen=...)``): one plugin instance per proxy
session, named by the ``prism-plugin-session`` metadata; Shutdown closes a session, not the
service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from sdk_plugins import CrashingBackgroundPlugin

from prism import grpc as pg
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    InitializeRequest,
    InitializeResponse,
    ShutdownRequest,
    ShutdownResponse,
)
from prism.grpc.wire.status import Status
from prism.sdk import BackendPlugin, OperationContext, operation
from prism.sdk.grpc_service import SESSION_DETAIL, SESSION_METADATA
from prism.sdk.runner import serve_plugin

SERVICE = "/prism.plugin.v1.BackendPlugin/"


class CounterPlugin(BackendPlugin):
    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @operation("incr", params=bytes, result=bytes)
    async def incr(self, params: bytes, ctx: OperationContext) -> bytes:
        self.count += 1
        return str(self.count).encode()


class Session:
    def __init__(self, channel: pg.Channel, name: str | None) -> None:
        self.channel = channel
        self.metadata = () if name is None else ((SESSION_METADATA, name),)

    async def initialize(self) -> InitializeResponse:
        response: InitializeResponse = await self.channel.unary_unary(
            SERVICE + "Initialize",
            InitializeRequest(namespace="n"),
            InitializeResponse,
            metadata=self.metadata,
        )
        return response

    async def execute(self, operation: str = "incr") -> ExecuteResponse:
        response: ExecuteResponse = await self.channel.unary_unary(
            SERVICE + "Execute",
            ExecuteRequest(operation=operation, raw_params=b""),
            ExecuteResponse,
            metadata=self.metadata,
        )
        return response

    async def health(self) -> HealthCheckResponse:
        response: HealthCheckResponse = await self.channel.unary_unary(
            SERVICE + "HealthCheck",
            HealthCheckRequest(),
            HealthCheckResponse,
            metadata=self.metadata,
        )
        return response

    async def shutdown(self) -> ShutdownResponse:
        response: ShutdownResponse = await self.channel.unary_unary(
            SERVICE + "Shutdown",
            ShutdownRequest(grace_period_ms=100),
            ShutdownResponse,
            metadata=self.metadata,
        )
        return response


async def serve(
    nursery: trio.Nursery, factory: type[BackendPlugin], idle_timeout: float = 300.0
) -> str:
    host, port = await nursery.start(
        lambda task_status: serve_plugin(
            factory,
            listen="127.0.0.1:0",
            session_idle_timeout=idle_timeout,
            task_status=task_status,
        )
    )
    return f"{host}:{port}"


@pytest.fixture
async def channel(nursery: trio.Nursery) -> AsyncIterator[pg.Channel]:
    async with pg.open_channel(await serve(nursery, CounterPlugin)) as channel:
        yield channel


async def test_sdk_grpc_service_sessions_have_their_own_instances(channel: pg.Channel) -> None:
    a, b = Session(channel, "a"), Session(channel, "b")
    assert (await a.initialize()).success
    assert (await b.initialize()).success
    assert [(await a.execute()).raw_result for _ in range(3)] == [b"1", b"2", b"3"]
    assert (await b.execute()).raw_result == b"1"
    assert not (await a.initialize()).success  # already initialized: a session is one instance


async def test_sdk_grpc_service_shutdown_closes_only_that_session(channel: pg.Channel) -> None:
    a, b = Session(channel, "a"), Session(channel, "b")
    await a.initialize()
    await b.initialize()
    assert (await a.shutdown()).success
    gone = await a.execute()
    assert (gone.success, gone.error_code) == (False, Status.UNAVAILABLE)
    health = await a.health()
    assert health.status == HealthCheckResponseStatus.UNHEALTHY
    assert health.details[SESSION_DETAIL] == "none"
    assert (await b.execute()).raw_result == b"1"  # the service and b go on
    assert (await a.shutdown()).success  # idempotent
    # The same session name may start afresh.
    assert (await a.initialize()).success
    assert (await a.execute()).raw_result == b"1"


async def test_sdk_grpc_service_calls_without_session_share_a_default(
    channel: pg.Channel,
) -> None:
    first, second = Session(channel, None), Session(channel, None)
    assert (await first.initialize()).success
    assert (await first.execute()).raw_result == b"1"
    assert (await second.execute()).raw_result == b"2"


async def test_sdk_grpc_service_closes_idle_sessions(nursery: trio.Nursery) -> None:
    async with pg.open_channel(await serve(nursery, CounterPlugin, idle_timeout=0.2)) as ch:
        a = Session(ch, "a")
        await a.initialize()
        with trio.fail_after(5):
            while (await a.health()).details.get(SESSION_DETAIL) != "none":  # noqa: ASYNC110
                await trio.sleep(0.3)  # longer than the timeout, so health checks do not keep it


async def test_sdk_grpc_service_crashing_session_leaves_service_running(
    nursery: trio.Nursery,
) -> None:
    async with pg.open_channel(await serve(nursery, CrashingBackgroundPlugin)) as ch:
        crashy = Session(ch, "crashy")
        assert (await crashy.initialize()).success
        with trio.fail_after(5):
            while (await crashy.health()).details.get(SESSION_DETAIL) != "none":  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert (await Session(ch, "next").initialize()).success
