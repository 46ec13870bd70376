"""memstore served as a sidecar would serve it: the BackendPlugin gRPC service on a Unix socket,
called through prism.grpc — the whole protocol path, transport included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import betterproto2
import pytest
import trio
import trio.testing
from prism_plugin_memstore import MemstoreConfig, MemstorePlugin

from prism import grpc as pg
from prism._proto.prism.data.v1 import (
    GetRequest,
    GetResponse,
    Message,
    PublishRequest,
    SetRequest,
    SubscribeRequest,
)
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    InitializeRequest,
    InitializeResponse,
    ShutdownRequest,
    ShutdownResponse,
    StreamRequest,
    StreamResponse,
)
from prism.sdk import pack, unpack
from prism.sdk.runner import serve_plugin

SERVICE = "/prism.plugin.v1.BackendPlugin/"


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[pg.Channel]:
    socket = tmp_path / "memstore.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_plugin(
                MemstorePlugin(), unix_socket=socket, task_status=task_status
            )
        )
        async with pg.open_channel(f"unix:{socket}") as channel:
            response = await channel.unary_unary(
                SERVICE + "Initialize",
                InitializeRequest(namespace="kv", config=pack(MemstoreConfig(max_keys=10))),
                InitializeResponse,
            )
            assert response.success, response.error
            yield channel
        nursery.cancel_scope.cancel()


async def execute(
    channel: pg.Channel, operation: str, params: betterproto2.Message
) -> ExecuteResponse:
    request = ExecuteRequest(operation=operation, typed_params=pack(params))
    return await channel.unary_unary(SERVICE + "Execute", request, ExecuteResponse)


async def test_memstore_served_execute_round_trip(channel: pg.Channel) -> None:
    assert (await execute(channel, "set", SetRequest(key="a", value=b"1"))).success
    response = await execute(channel, "get", GetRequest(key="a"))
    got = unpack(response.typed_result, GetResponse)
    assert (got.found, got.value) == (True, b"1")
    missing = await execute(channel, "get", GetRequest(key=""))
    assert (missing.success, missing.error_code) == (False, pg.Status.INVALID_ARGUMENT)


async def test_memstore_served_subscription_streams_messages(channel: pg.Channel) -> None:
    async with channel.stream(SERVICE + "ExecuteStream", StreamResponse) as call:
        opening = StreamRequest(
            operation="subscribe", typed_params=pack(SubscribeRequest(topic="t"))
        )
        await call.send_message(opening)
        await call.end()  # half-close: the subscription goes on
        await trio.testing.wait_all_tasks_blocked()  # the server (same Trio run) subscribed
        await execute(channel, "publish", PublishRequest(topic="t", payload=b"hello"))
        response = await call.receive_message()
        message = unpack(response.typed_result, Message)
        assert (message.payload, message.sequence) == (b"hello", 1)


async def test_memstore_served_shutdown_ends_subscriptions(channel: pg.Channel) -> None:
    async with channel.stream(SERVICE + "ExecuteStream", StreamResponse) as call:
        opening = StreamRequest(
            operation="subscribe", typed_params=pack(SubscribeRequest(topic="t"))
        )
        await call.send_message(opening)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(2):
            response = await channel.unary_unary(
                SERVICE + "Shutdown", ShutdownRequest(grace_period_ms=30_000), ShutdownResponse
            )
        assert response.success
        with pytest.raises(pg.Unavailable, match="shutting down"):
            await call.receive_message()
