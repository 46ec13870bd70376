"""What the redis plugin adds to the shared contracts (the acceptance suites check those):
``eval`` with its script cache, the key prefix, the plugin's own keys, limits and metrics —
against a real redis-server, inspected with redis-py."""

from __future__ import annotations

import hashlib

import pytest
import trio
from prism_plugin_redis import EvalRequest, RedisArray, RedisPlugin, RedisValue
from redis_server import RedisServer, config

from prism._proto.prism.data.v1 import (
    ExistsRequest,
    GetRequest,
    ListKeysRequest,
    PublishRequest,
    SetRequest,
)
from prism.sdk import InvalidArgument, PermissionDenied
from prism.sdk.testing import PluginHarness


def harness(server: RedisServer, **extra: object) -> PluginHarness:
    return PluginHarness(
        RedisPlugin, config=config(server, **extra), credentials=server.credentials.as_map()
    )


async def test_redis_eval_runs_by_sha_and_counts_script_cache_hits_and_misses(
    redis_server: RedisServer,
) -> None:
    script = "return {KEYS[1], ARGV[1], 42, false, redis.pcall('GET')}"
    request = EvalRequest(script=script, keys=["k"], args=[b"\x00arg"])
    async with harness(redis_server, key_prefix="ns:") as h:
        h.metrics()  # a new interval
        first = await h.execute("eval", request)
        expected = RedisValue(
            array=RedisArray(
                items=[
                    RedisValue(bulk=b"ns:k"),  # KEYS get the namespace's prefix
                    RedisValue(bulk=b"\x00arg"),
                    RedisValue(integer=42),
                    RedisValue(nil=True),
                    RedisValue(error="ERR Wrong number of args calling Redis command from script"),
                ]
            )
        )
        assert first.result == expected  # type: ignore[union-attr]
        await h.execute("eval", request)
        metrics = h.metrics()
        assert (metrics.cache_misses, metrics.cache_hits) == (1, 1)
        sha = hashlib.sha1(script.encode()).hexdigest()
        assert redis_server.client().script_exists(sha) == [True]
        redis_server.client().script_flush()
        await h.execute("eval", request)
        assert h.metrics().cache_misses == 1


async def test_redis_eval_errors_map_to_statuses(redis_server: RedisServer) -> None:
    async with harness(redis_server) as h:
        with pytest.raises(InvalidArgument, match="Error compiling script"):
            await h.execute("eval", EvalRequest(script="this is not lua"))
        with pytest.raises(InvalidArgument, match="script must not be empty"):
            await h.execute("eval", EvalRequest(script=""))
        with pytest.raises(InvalidArgument, match="keys\\[0\\]"):
            await h.execute("eval", EvalRequest(script="return 1", keys=[""]))


async def test_redis_acl_denied_command_is_permission_denied(redis_server: RedisServer) -> None:
    user = await trio.to_thread.run_sync(redis_server.add_user, "limited")
    redis_server.client().acl_setuser(user.username, enabled=True, commands=["-flushall"])
    async with PluginHarness(
        RedisPlugin, config=config(redis_server), credentials=user.as_map()
    ) as h:
        with pytest.raises(PermissionDenied, match="can't run this command"):
            await h.execute("eval", EvalRequest(script="return redis.call('FLUSHALL')"))
        redis_server.client().acl_setuser(user.username, enabled=True, commands=["-exists"])
        with pytest.raises(PermissionDenied, match="NOPERM"):
            await h.execute("exists", ExistsRequest(key="k"))


async def test_redis_key_prefix_keeps_namespaces_apart(redis_server: RedisServer) -> None:
    async with (
        harness(redis_server, key_prefix="a:") as a,
        harness(redis_server, key_prefix="b:") as b,
    ):
        await a.execute("set", SetRequest(key="k", value=b"from a"))
        assert not (await b.execute("get", GetRequest(key="k"))).found  # type: ignore[union-attr]
        listed = await a.execute("list_keys", ListKeysRequest())
        assert list(listed.keys) == ["k"]  # type: ignore[union-attr]
    stored = redis_server.client().get("a:k")
    assert stored[:1] == b"\x01"
    assert stored[9:] == b"from a"


async def test_redis_sequence_counters_are_not_listed_and_scripts_survive_a_flush(
    redis_server: RedisServer,
) -> None:
    async with harness(redis_server) as h:
        published = await h.execute("publish", PublishRequest(topic="t", payload=b"x"))
        assert published.sequence == 1  # type: ignore[union-attr]
        assert (await h.execute("publish", PublishRequest(topic="t"))).sequence == 2  # type: ignore[union-attr]
        await h.execute("set", SetRequest(key="visible", value=b"1"))
        assert list((await h.execute("list_keys", ListKeysRequest())).keys) == ["visible"]  # type: ignore[union-attr]
        redis_server.client().script_flush()  # the plugin's own scripts too: EVAL again
        got = await h.execute("get", GetRequest(key="visible"))
        assert got.value == b"1"  # type: ignore[union-attr]


async def test_redis_limits_come_from_config(redis_server: RedisServer) -> None:
    async with harness(redis_server, max_key_bytes=8, max_value_bytes=4) as h:
        await h.execute("set", SetRequest(key="k" * 8, value=b"1234"))
        with pytest.raises(InvalidArgument, match="limit of 8 bytes"):
            await h.execute("set", SetRequest(key="k" * 9, value=b"1"))
        with pytest.raises(InvalidArgument, match="over the limit of 4"):
            await h.execute("set", SetRequest(key="k", value=b"12345"))
    assert redis_server.client().get("k") is None


async def test_redis_pool_opens_every_connection_and_reports_them(
    redis_server: RedisServer,
) -> None:
    async with harness(redis_server, pool_size=3, client_name="prism-metrics") as h:
        assert h.metrics().connections_active == 3
        users = redis_server.connections("prism-metrics")
        assert users == [redis_server.credentials.username] * 3
        health = await h.health()
        assert health.details["connections"] == "3"
