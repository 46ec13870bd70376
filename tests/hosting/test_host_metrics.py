"""The host polls each instance's plugin metrics (RFC-008: interval counters that reset on each
fetch) and keeps the latest interval and cumulative totals."""

from __future__ import annotations

import pytest
import trio
from host_testkit import Running, namespace, proxy_config, running_proxy

from prism._proto.prism.data.v1 import GetRequest, SetRequest


async def operations(running: Running, sets: int, hits: int, misses: int) -> None:
    for i in range(sets):
        await running.execute("kv", "set", SetRequest(key=f"k{i}", value=b"v"))
    for i in range(hits):
        await running.execute("kv", "get", GetRequest(key=f"k{i % max(sets, 1)}"))
    for i in range(misses):
        await running.execute("kv", "get", GetRequest(key=f"missing{i}"))


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_host_metrics_poll_keeps_interval_and_totals(mode: str) -> None:
    # A poller that never fires on its own: this test polls, so it sees whole intervals.
    ns = namespace("kv", "memstore", mode, health_interval=3600)
    async with running_proxy(proxy_config(ns)) as running:
        instance = running.proxy.host.route("kv").current
        assert instance is not None
        await operations(running, sets=5, hits=3, misses=2)
        first = await instance.poll_metrics()
        assert first is not None
        assert (first.requests_total, first.requests_failed) == (10, 0)
        assert (first.cache_hits, first.cache_misses) == (3, 2)
        assert first.latency_ms > 0

        await operations(running, sets=1, hits=1, misses=0)
        second = await instance.poll_metrics()
        assert second is not None
        # The interval started at the first poll: only what happened since.
        assert (second.requests_total, second.cache_hits, second.cache_misses) == (2, 1, 0)
        assert second.interval_start_ns >= first.interval_start_ns
        assert instance.metrics == second
        assert running.proxy.host.latest_metrics("kv") == second
        totals = instance.totals
        assert (totals.polls, totals.requests_total) == (2, 12)
        assert (totals.cache_hits, totals.cache_misses, totals.requests_failed) == (4, 2, 0)


async def test_host_metrics_poller_runs_every_health_interval() -> None:
    ns = namespace("kv", "memstore", "sidecar", health_interval=0.2)
    async with running_proxy(proxy_config(ns)) as running:
        instance = running.proxy.host.route("kv").current
        assert instance is not None
        await operations(running, sets=4, hits=4, misses=1)
        with trio.fail_after(5):
            while instance.totals.requests_total < 9:  # noqa: ASYNC110 - the poller's work
                await trio.sleep(0.05)
        assert instance.totals.cache_hits == 4
        polls = instance.totals.polls
        with trio.fail_after(5):
            while instance.totals.polls < polls + 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        # Nothing happened since: the latest interval is empty, the totals unchanged.
        assert instance.metrics is not None
        assert instance.metrics.requests_total == 0
        assert instance.totals.requests_total == 9
