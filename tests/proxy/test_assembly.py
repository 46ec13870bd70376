"""The traffic stages as assembly builds them from a namespace's ``traffic`` section: what is on
by default, and the default deadline (a unary call without one gets the namespace's; a client's
own deadline wins; streams get none)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from traffic_plugins import FlakyPlugin
from traffic_testkit import flaky, flaky_proxy, running_proxy, work

from prism.config import NamespaceConfig, PluginConfig
from prism.grpc.wire.status import DeadlineExceeded
from prism.proxy.assembly import namespace_stages
from prism.proxy.breaker import InstanceBreakers
from prism.proxy.limits import ConcurrencyLimit
from prism.proxy.metrics import ProxyMetrics
from prism.proxy.pipeline import NoConcurrencyLimit, NoRateLimit
from prism.proxy.ratelimit import TokenBuckets


async def test_assembly_defaults_limit_nothing_and_keep_a_breaker() -> None:
    ns = NamespaceConfig("kv", PluginConfig("memstore"))
    stages = namespace_stages(flaky_proxy(ns), ns, ProxyMetrics().add_namespace("kv"))
    assert isinstance(stages.rate_limiter, NoRateLimit)
    assert isinstance(stages.limiter, NoConcurrencyLimit)
    assert isinstance(stages.breakers, InstanceBreakers)
    assert stages.default_timeout is None


def test_assembly_builds_configured_limits() -> None:
    # Outside trio.run, as a proxy is constructed before it runs.
    ns = flaky(
        rate_limit={"rate": 100},
        caller_rate_limit={"rate": 10},
        concurrency={"max_in_flight": 8},
        default_timeout=2.5,
    )
    stages = namespace_stages(flaky_proxy(ns), ns, ProxyMetrics().add_namespace("flaky"))
    assert isinstance(stages.rate_limiter, TokenBuckets)
    assert isinstance(stages.limiter, ConcurrencyLimit)
    assert stages.default_timeout == 2.5


async def test_assembly_default_timeout_ends_a_call_sent_without_a_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_proxy(flaky_proxy(flaky(default_timeout=3))) as running:
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await work(running, operation="sleep", params=b"3600")
        assert 3 <= trio.current_time() - start < 3600  # the namespace's 3 s, not the hour
        assert await work(running, operation="sleep", params=b"1") == b"slept"


async def test_assembly_default_timeout_yields_to_the_clients_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_proxy(flaky_proxy(flaky(default_timeout=3))) as running:
        # A longer deadline of the client's own: the call may take 10 s.
        assert await work(running, operation="sleep", params=b"10", timeout=60) == b"slept"
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):  # and a shorter one ends it sooner
            await work(running, operation="sleep", params=b"2", timeout=1)
        assert trio.current_time() - start < 2
        assert FlakyPlugin.instances[-1].calls == 0
