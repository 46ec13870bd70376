"""Backend failures as callers see them, against a real redis-server that the tests stop,
pause (SIGSTOP) and reconfigure: each maps to its gRPC status, and health follows."""

from __future__ import annotations

import os
import signal

import pytest
import trio
from prism_plugin_redis import RedisPlugin
from redis_server import RedisServer, config, sigstop

from prism._proto.prism.data.v1 import GetRequest, SetRequest, SubscribeRequest
from prism.sdk import (
    DeadlineExceeded,
    FailedPrecondition,
    HealthStatus,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from prism.sdk.testing import PluginHarness


async def recovered(h: PluginHarness) -> None:
    """The value reads again and health is HEALTHY, soon (a busy machine may need a few
    tries: the server has a backlog to work through after SIGCONT)."""
    with trio.fail_after(30):
        while True:
            try:
                got = await h.execute("get", GetRequest(key="k"))
            except (DeadlineExceeded, Unavailable):
                await trio.sleep(0.1)
                continue
            assert got.value == b"v"  # type: ignore[union-attr]
            if (await h.health()).status == HealthStatus.HEALTHY:
                return
            await trio.sleep(0.1)


def harness(server: RedisServer, **extra: object) -> PluginHarness:
    return PluginHarness(
        RedisPlugin, config=config(server, **extra), credentials=server.credentials.as_map()
    )


async def test_redis_unreachable_server_fails_initialize_with_unavailable(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    with pytest.raises(Unavailable, match="cannot be reached"):
        async with harness(redis_server):
            pass


async def test_redis_stopped_server_is_unavailable_and_health_degraded(
    redis_server: RedisServer,
) -> None:
    async with harness(redis_server) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        await trio.to_thread.run_sync(redis_server.stop)
        with pytest.raises(Unavailable):
            await h.execute("get", GetRequest(key="k"))
        health = await h.health()
        assert health.status == HealthStatus.DEGRADED
        assert "cannot be reached" in health.message
        assert redis_server.credentials.password not in health.message


async def test_redis_paused_server_is_deadline_exceeded_then_recovers(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP: the server accepts nothing and answers nothing (a hung backend). Calls fail
    after command_timeout_ms; once it runs again, the pool replaces the abandoned connections."""
    async with harness(redis_server, command_timeout_ms=1000) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        process = redis_server.server.process
        assert process is not None
        try:
            await sigstop(process.pid)
            with trio.fail_after(30):
                with pytest.raises(DeadlineExceeded, match="did not answer get"):
                    await h.execute("get", GetRequest(key="k"))
                assert (await h.health()).status == HealthStatus.DEGRADED
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await recovered(h)


async def test_redis_revoked_credentials_make_calls_unauthenticated_and_health_unhealthy(
    redis_server: RedisServer,
) -> None:
    user = await trio.to_thread.run_sync(redis_server.add_user, "revoked")
    async with PluginHarness(
        RedisPlugin, config=config(redis_server), credentials=user.as_map()
    ) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        await trio.to_thread.run_sync(redis_server.expire_credentials, user.username)
        with pytest.raises(Unauthenticated):
            await h.execute("get", GetRequest(key="k"))
        health = await h.health()
        assert health.status == HealthStatus.UNHEALTHY
        assert user.password not in health.message


async def test_redis_subscription_ends_unavailable_when_the_server_stops(
    redis_server: RedisServer,
) -> None:
    async with (
        harness(redis_server) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as subscription,
    ):
        await trio.to_thread.run_sync(redis_server.stop)
        with trio.fail_after(30), pytest.raises(Unavailable, match="lost its connection"):
            await subscription.receive()


async def test_redis_values_written_by_others_are_failed_precondition(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    admin.set("plain", b"not the plugin's layout")
    admin.hset("hash", "field", "value")
    async with harness(redis_server) as h:
        with pytest.raises(FailedPrecondition, match="the redis plugin did not write"):
            await h.execute("get", GetRequest(key="plain"))
        with pytest.raises(FailedPrecondition, match="WRONGTYPE"):
            await h.execute("get", GetRequest(key="hash"))


async def test_redis_bad_config_is_invalid_argument(redis_server: RedisServer) -> None:
    for bad, match in (
        ({"pool_size": -1}, "pool_size"),
        ({"port": 70000}, "port"),
        ({"client_name": "two words"}, "client_name"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            async with harness(redis_server, **bad):
                pass
    with pytest.raises(InvalidArgument, match="credential 'password'"):
        async with PluginHarness(RedisPlugin, config=config(redis_server), credentials={}):
            pass
