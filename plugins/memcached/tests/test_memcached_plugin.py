"""The memcached plugin against a real memcached of its own: how keys map, TTLs as memcached
knows them, limits, metrics, and backend failures as statuses (the acceptance suites check the
shared contracts, and the refusal of what memcached cannot do)."""

from __future__ import annotations

import os
import signal

import pytest
import trio
from memcached_server import MemcachedServer, config, sigstop
from prism_plugin_memcached import MemcachedPlugin

from prism._proto.prism.data.v1 import (
    ExpireRequest,
    GetManyRequest,
    GetRequest,
    SetRequest,
)
from prism.sdk import DeadlineExceeded, HealthStatus, InvalidArgument, Unavailable
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


def harness(server: MemcachedServer, **extra: object) -> PluginHarness:
    return PluginHarness(MemcachedPlugin, config=config(server, **extra))


async def test_memcached_keys_are_stored_under_their_exact_utf8_bytes(
    memcached_server: MemcachedServer,
) -> None:
    """Plain keys travel as they are (pymemcache reads them); keys with spaces or control
    characters travel base64-encoded and still name exactly their bytes."""
    async with harness(memcached_server, key_prefix="p:") as h:
        await h.execute("set", SetRequest(key="plain-ключ", value=b"1"))
        await h.execute("set", SetRequest(key="with space", value=b"2"))
        await h.execute("set", SetRequest(key="with space ", value=b"3"))
        assert memcached_server.client().get("p:plain-ключ".encode()) == b"1"
        got = await h.execute(
            "get_many", GetManyRequest(keys=["with space", "with space ", "with"])
        )
        assert [(g.found, g.value) for g in got.items] == [(True, b"2"), (True, b"3"), (False, b"")]  # type: ignore[union-attr]
        raw = memcached_server.client().raw_command(b"mg cDp3aXRoIHNwYWNl b v\r\nmn", b"MN\r\n")
        assert raw == b"VA 1\r\n2\r\n"  # the key is base64 of "p:with space"


async def test_memcached_keys_it_cannot_map_are_invalid_argument(
    memcached_server: MemcachedServer,
) -> None:
    async with harness(memcached_server) as h:
        await h.execute("set", SetRequest(key="k" * 250, value=b"1"))
        await h.execute("set", SetRequest(key=" " * 186, value=b"1"))
        with pytest.raises(InvalidArgument, match="186 bytes"):
            await h.execute("set", SetRequest(key=" " * 187, value=b"1"))
        with pytest.raises(InvalidArgument, match="limit of 250 bytes"):
            await h.execute("get", GetRequest(key="k" * 251))
    with pytest.raises(InvalidArgument, match="max_key_bytes"):
        async with harness(memcached_server, key_prefix="long:", max_key_bytes=250):
            pass


async def test_memcached_a_value_at_the_limit_is_stored_one_over_is_refused(
    memcached_server: MemcachedServer,
) -> None:
    limit = (1 << 20) - 1024
    async with harness(memcached_server) as h:
        await h.execute("set", SetRequest(key="k" * 250, value=b"v" * limit))
        assert memcached_server.client().get(b"k" * 250) == b"v" * limit
        with pytest.raises(InvalidArgument, match="over the limit"):
            await h.execute("set", SetRequest(key="big", value=b"v" * (limit + 1)))
    async with harness(memcached_server, max_value_bytes=2 << 20) as h:
        with pytest.raises(InvalidArgument, match="too large"):  # memcached's own -I
            await h.execute("set", SetRequest(key="big", value=b"v" * (2 << 20)))


async def test_memcached_ttls_are_whole_seconds_and_long_ones_absolute(
    memcached_server: MemcachedServer,
) -> None:
    month = 40 * 24 * 3600 * 1000  # past memcached's 30 days of relative expiry
    async with harness(memcached_server) as h:
        await h.execute("set", SetRequest(key="short", value=b"1", ttl_ms=1500))
        got = await h.execute("get", GetRequest(key="short"))
        assert got.ttl_remaining_ms in (1000, 2000)  # type: ignore[union-attr]
        await h.execute("set", SetRequest(key="long", value=b"1", ttl_ms=month))
        remaining = (await h.execute("get", GetRequest(key="long"))).ttl_remaining_ms  # type: ignore[union-attr]
        assert remaining is not None
        assert month - 5000 <= remaining <= month
        etag = (await h.execute("get", GetRequest(key="long"))).etag  # type: ignore[union-attr]
        await h.execute("expire", ExpireRequest(key="long", persist=True))
        got = await h.execute("get", GetRequest(key="long"))
        assert (got.ttl_remaining_ms, got.etag) == (None, etag)  # type: ignore[union-attr]


async def test_memcached_counts_gets_as_cache_hits_and_misses(
    memcached_server: MemcachedServer,
) -> None:
    async with harness(memcached_server, pool_size=3) as h:
        h.metrics()
        await h.execute("set", SetRequest(key="a", value=b"1"))
        await h.execute("get", GetRequest(key="a"))
        await h.execute("get_many", GetManyRequest(keys=["a", "b", "c"]))
        metrics = h.metrics()
        assert (metrics.cache_hits, metrics.cache_misses) == (2, 2)
        assert metrics.connections_active == 3


async def test_memcached_stopped_server_is_unavailable_and_health_degraded(
    memcached_server: MemcachedServer,
) -> None:
    async with harness(memcached_server) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        await trio.to_thread.run_sync(memcached_server.stop)
        with pytest.raises(Unavailable):
            await h.execute("get", GetRequest(key="k"))
        health = await h.health()
        assert health.status == HealthStatus.DEGRADED
    with pytest.raises(Unavailable, match="cannot be reached"):
        async with harness(memcached_server):
            pass


async def test_memcached_paused_server_is_deadline_exceeded_then_recovers(
    memcached_server: MemcachedServer,
) -> None:
    async with harness(memcached_server, command_timeout_ms=1000) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        process = memcached_server.server.process
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


async def test_memcached_get_many_reads_replies_across_many_socket_reads(
    memcached_server: MemcachedServer,
) -> None:
    """200 values of 20 KB (4 MB of replies, many reads of the socket; replies split anywhere)
    come back each under its key, TTLs and etags included; on the pool's one connection the
    next call's reply is its own (the reader stays in step)."""
    async with harness(memcached_server, pool_size=1) as h:
        keys = [f"big{i:03d}" for i in range(200)]
        etags = {}
        for i, key in enumerate(keys):
            ttl = 60_000 if i % 2 else 0
            value = bytes([i % 256]) * 20_000
            etags[key] = (await h.execute("set", SetRequest(key=key, value=value, ttl_ms=ttl))).etag  # type: ignore[union-attr]
        asked = [*keys[:100], "absent", *keys[100:]]
        got = (await h.execute("get_many", GetManyRequest(keys=asked))).items  # type: ignore[union-attr]
        assert len(got) == len(asked)
        for key, item in zip(asked, got, strict=True):
            if key == "absent":
                assert (item.found, item.value, item.etag) == (False, b"", "")
                assert item.ttl_remaining_ms is None
                continue
            i = int(key[3:])
            assert (item.found, item.etag) == (True, etags[key])
            assert item.value == bytes([i % 256]) * 20_000
            assert (item.ttl_remaining_ms is None) == (i % 2 == 0)
            if item.ttl_remaining_ms is not None:
                assert 0 < item.ttl_remaining_ms <= 60_000
        after = await h.execute("get", GetRequest(key=keys[7]))
        assert after.value == bytes([7]) * 20_000  # type: ignore[union-attr]
