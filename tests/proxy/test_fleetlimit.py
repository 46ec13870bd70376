"""Fleet limits against a real redis-server: the GCRA script (burst, steady rate on Redis's
clock, batches, NOSCRIPT), limiters sharing one bucket, and what they do while Redis is
unreachable, paused or killed, and when it returns."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import coredis
import pytest
import trio
import trio.testing
from etcd_server import free_port
from redis_process import RedisProcess, redis_process
from test_ratelimit import retry_delay

from prism.config.fleet import FleetRedisConfig
from prism.config.traffic import CallerRateLimitConfig, RateLimitConfig
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import ResourceExhausted
from prism.proxy.fleetlimit import FleetLimit, FleetRedis
from prism.proxy.metrics import ProxyMetrics
from prism.proxy.request import Identity, RequestInfo

PASSWORD = "fleet-test-password"


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with redis_process(PASSWORD) as server:
        yield server


def config(address: str, **fields: object) -> FleetRedisConfig:
    """Redis at ``address``; a slow answer is not a failure (the machine is shared and busy)
    unless the test says otherwise."""
    fields.setdefault("call_timeout", 10.0)
    return FleetRedisConfig(address=address, password=PASSWORD, **fields)  # type: ignore[arg-type]


def fleet_limit(**fields: object) -> RateLimitConfig:
    """A fleet limit whose calls may wait for Redis as long as this busy machine needs (the
    tests of ``max_wait`` set their own)."""
    fields.setdefault("max_wait", 10.0)
    return RateLimitConfig(scope="fleet", **fields)  # type: ignore[arg-type]


@asynccontextmanager
async def connected(
    settings: FleetRedisConfig, metrics: ProxyMetrics | None = None
) -> AsyncIterator[FleetRedis]:
    async with trio.open_nursery() as nursery:
        redis = FleetRedis(settings, settings.password, metrics or ProxyMetrics())
        await nursery.start(redis.run)
        yield redis
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def admin(server: RedisProcess) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis("127.0.0.1", server.port, password=PASSWORD) as client:
        yield client


async def server_time(client: coredis.Redis[bytes]) -> float:
    """Redis's clock (TIME, read raw: seconds and microseconds)."""
    seconds, micros = await client.eval("return redis.call('TIME')")  # type: ignore[misc]
    return int(seconds) + int(micros) / 1e6


def call(subject: str = "") -> RequestInfo:
    info = RequestInfo(PeerInfo("127.0.0.1:1", "tcp"), 0.0)
    info.namespace = "kv"
    if subject:
        info.identity = Identity(subject, "jwt")
    return info


async def through(limit: FleetLimit, info: RequestInfo) -> None:
    """One call through the limit, as the pipeline makes it."""
    if not limit.check(info):
        await limit.wait_for_token(info)


async def admit(limit: FleetLimit, info: RequestInfo | None = None) -> bool:
    """One call through the limit: True admitted, False refused (RESOURCE_EXHAUSTED)."""
    try:
        await through(limit, info or call())
    except ResourceExhausted:
        return False
    return True


async def first_refusal(limit: FleetLimit) -> ResourceExhausted:
    with trio.fail_after(30):
        while True:
            try:
                await through(limit, call())
            except ResourceExhausted as exc:
                return exc


# -- the GCRA script -------------------------------------------------------------------------


async def test_gcra_grants_the_burst_then_says_when(redis: RedisProcess) -> None:
    with trio.fail_after(30):
        async with connected(config(redis.address)) as fleet:
            interval = 1e6 / 2  # 2 tokens a second: µs a token
            assert await fleet.take("k", interval, 5 * interval, 8) == (5, 0.0)  # the burst
            granted, wait = await fleet.take("k", interval, 5 * interval, 1)
            assert granted == 0
            assert 0 < wait <= 0.5  # one token every 0.5 s


async def test_gcra_batches_add_up_to_the_burst(redis: RedisProcess) -> None:
    with trio.fail_after(30):
        async with connected(config(redis.address)) as fleet:
            interval = 1e6 * 1000  # one token every 1000 s: none comes back during the test
            grants = [(await fleet.take("k", interval, 10 * interval, 3))[0] for _ in range(5)]
            assert grants == [3, 3, 3, 1, 0]  # the last batch partial, then nothing


async def test_gcra_keeps_the_rate_on_redis_clock(redis: RedisProcess) -> None:
    rate, burst = 200.0, 200  # a burst of 1 s: a stall of the test loses no token
    interval = 1e6 / rate
    with trio.fail_after(60):
        async with connected(config(redis.address)) as fleet, admin(redis) as client:
            start = await server_time(client)
            total = (await fleet.take("k", interval, burst * interval, 1000))[0]
            first = await server_time(client)
            for _ in range(100):
                before_last = await server_time(client)
                total += (await fleet.take("k", interval, burst * interval, 1000))[0]
                await trio.sleep(0.002)
            end = await server_time(client)
    # Bounds from Redis's own clock, read around the calls: never from the test's timing.
    assert total <= burst + rate * (end - start) + 1
    assert total >= burst + rate * (before_last - first) - 1


async def test_gcra_reloads_the_script_after_noscript(redis: RedisProcess) -> None:
    with trio.fail_after(30):
        async with connected(config(redis.address)) as fleet, admin(redis) as client:
            interval = 1e6
            assert (await fleet.take("k", interval, 3 * interval, 1))[0] == 1
            await client.script_flush()  # what a Redis restart does too
            assert (await fleet.take("k", interval, 3 * interval, 1))[0] == 1
            assert fleet.up


async def test_gcra_runs_as_the_documented_acl_user(redis: RedisProcess) -> None:
    # docs/deployment.md's ACL for the proxies' user: nothing more is needed.
    acl = "~prism:ratelimit:* +evalsha +script|load +time +get +set +ping +hello"
    acl += " +client|setname +select"
    with trio.fail_after(30):
        cli = ["redis-cli", "-p", str(redis.port), "-a", PASSWORD, "--no-auth-warning"]
        await trio.run_process([*cli, "ACL", "SETUSER", "prism", "on", ">pw", *acl.split()])
        settings = FleetRedisConfig(address=redis.address, username="prism", password="pw", db=1)
        async with connected(settings) as fleet:
            assert await fleet.take("prism:ratelimit:kv", 1e6, 2e6, 5) == (2, 0.0)
            assert fleet.up


# -- limiters sharing one bucket ----------------------------------------------------------------


async def test_fleet_limit_is_shared_by_proxies(redis: RedisProcess) -> None:
    # Two proxies (two connections, two limiters) on one key: together they admit the
    # bucket's 20 tokens, less what each still holds in hand, at most max_batch each.
    limit = fleet_limit(rate=0.001, burst=20, max_batch=5)
    with trio.fail_after(30):
        async with connected(config(redis.address)) as a, connected(config(redis.address)) as b:
            metrics = ProxyMetrics()
            one = FleetLimit("kv", limit, a, metrics.add_namespace("kv"))
            two = FleetLimit("kv", limit, b, ProxyMetrics().add_namespace("kv"))
            admitted = 0
            for _ in range(40):
                admitted += await admit(one)
                admitted += await admit(two)
            assert admitted + one.stock + two.stock == 20
            assert admitted >= 20 - 2 * 5
            refused = metrics.namespace("kv").rate_limited.value
            assert refused > 0
            # Once Redis said "empty", refusals are decided here, not by asking Redis again.
            assert metrics.namespace("kv").fleet_redis_calls.value < refused


async def test_fleet_limit_refusal_carries_retry_info(redis: RedisProcess) -> None:
    limit = fleet_limit(rate=1, burst=1)
    with trio.fail_after(30):
        async with connected(config(redis.address)) as fleet:
            one = FleetLimit("kv", limit, fleet, ProxyMetrics().add_namespace("kv"))
            assert await admit(one)
            refused = await first_refusal(one)
            assert "fleet limit: 1 calls/s" in refused.message
            assert 0 < retry_delay(refused) <= 1


async def test_fleet_limit_takes_the_callers_own_limit_first(redis: RedisProcess) -> None:
    limit = fleet_limit(rate=0.001, burst=3)
    per_caller = CallerRateLimitConfig(rate=0.001, burst=1)
    with trio.fail_after(30):
        async with connected(config(redis.address)) as fleet:
            one = FleetLimit("kv", limit, fleet, ProxyMetrics().add_namespace("kv"), per_caller)
            assert await admit(one, call("alice"))
            assert not await admit(one, call("alice"))  # her own limit: the fleet's is spared
            assert await admit(one, call("bob"))
            assert await admit(one, call("carol"))
            assert not await admit(one, call("dave"))  # the fleet's limit
            assert one.stock == 0


# -- Redis unreachable ------------------------------------------------------------------------


async def test_fleet_limit_fails_open_to_the_local_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "prism.proxy.fleetlimit")
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    limit = RateLimitConfig(rate=100, burst=3, scope="fleet", fallback_rate=0.001)
    with trio.fail_after(30):
        metrics = ProxyMetrics()
        async with connected(config(nobody), metrics) as fleet:
            one = FleetLimit("kv", limit, fleet, metrics.add_namespace("kv"))
            outcomes = [await admit(one) for _ in range(6)]
    assert outcomes == [True, True, True, False, False, False]  # the local bucket's 3
    series = metrics.namespace("kv")
    assert series.fleet_fallbacks("open").value == 6
    assert series.rate_limited.value == 3
    assert metrics.fleet_redis_outages.labels().value == 1
    assert metrics.fleet_redis_up.labels().value == 0
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # once per outage, not per call
    assert PASSWORD not in caplog.text


async def test_fleet_limit_fails_closed() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    limit = RateLimitConfig(rate=100, scope="fleet", on_redis_failure="closed")
    with trio.fail_after(30):
        metrics = ProxyMetrics()
        async with connected(config(nobody), metrics) as fleet:
            one = FleetLimit("kv", limit, fleet, metrics.add_namespace("kv"))
            with pytest.raises(ResourceExhausted) as raised:
                await through(one, call())
            assert "on_redis_failure: closed" in raised.value.message
            assert not await admit(one)
    assert metrics.namespace("kv").fleet_fallbacks("closed").value == 2


async def test_fleet_limit_returns_when_redis_does(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "prism.proxy.fleetlimit")
    limit = fleet_limit(rate=0.001, burst=2, on_redis_failure="closed")
    with redis_process(PASSWORD) as server, trio.fail_after(60):
        server.kill()
        metrics = ProxyMetrics()
        async with connected(config(server.address, reconnect_max=0.2), metrics) as fleet:
            one = FleetLimit("kv", limit, fleet, metrics.add_namespace("kv"))
            assert not await admit(one)  # closed: Redis is not there
            server.start()  # the same port
            while not fleet.up:  # noqa: ASYNC110 - what prism_fleet_redis_up tells an operator
                await trio.sleep(0.05)
            assert [await admit(one) for _ in range(3)] == [True, True, False]  # the fleet's 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1
    assert metrics.fleet_redis_up.labels().value == 1


async def test_fleet_limit_killed_redis_mid_traffic(redis: RedisProcess) -> None:
    limit = fleet_limit(rate=1000, fallback_rate=1000)
    with trio.fail_after(60):
        metrics = ProxyMetrics()
        async with connected(config(redis.address, reconnect_max=0.2), metrics) as fleet:
            one = FleetLimit("kv", limit, fleet, metrics.add_namespace("kv"))
            assert all([await admit(one) for _ in range(20)])
            redis.kill()
            assert all([await admit(one) for _ in range(200)])  # open: the local bucket
            assert not fleet.up
            assert metrics.namespace("kv").fleet_fallbacks("open").value > 0
            redis.start()
            while not fleet.up:  # noqa: ASYNC110 - what prism_fleet_redis_up tells an operator
                await trio.sleep(0.05)
            tokens = metrics.namespace("kv").fleet_tokens.value
            assert all([await admit(one) for _ in range(20)])
            assert metrics.namespace("kv").fleet_tokens.value > tokens  # from Redis again


async def test_fleet_limit_never_waits_longer_than_max_wait(redis: RedisProcess) -> None:
    # Redis paused and a call_timeout far longer than max_wait: a call without a token in
    # hand is decided by on_redis_failure while Redis's call is still pending.
    limit = RateLimitConfig(rate=1000, scope="fleet", max_wait=0.05, fallback_rate=1000)
    with trio.fail_after(60):
        metrics = ProxyMetrics()
        async with connected(config(redis.address, call_timeout=30.0), metrics) as fleet:
            one = FleetLimit("kv", limit, fleet, metrics.add_namespace("kv"))
            await redis.pause()
            try:
                assert await admit(one)
                assert fleet.up  # Redis's call has not timed out: the call did not wait for it
                assert metrics.namespace("kv").fleet_fallbacks("open").value == 1
            finally:
                redis.resume()


async def test_fleet_limit_redis_killed_during_a_call(redis: RedisProcess) -> None:
    # A call waits for Redis (paused: the request is sent, no answer comes), Redis is killed:
    # the call is decided at once by on_redis_failure, not by call_timeout.
    limit = fleet_limit(rate=1000, fallback_rate=1000)
    with trio.fail_after(60):
        metrics = ProxyMetrics()
        async with connected(config(redis.address, call_timeout=30.0), metrics) as fleet:
            one = FleetLimit("kv", limit, fleet, metrics.add_namespace("kv"))
            await redis.pause()
            outcomes: list[bool] = []

            async def one_call() -> None:
                outcomes.append(await admit(one))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one_call)
                await trio.testing.wait_all_tasks_blocked()  # the call waits on Redis
                assert outcomes == []
                redis.kill()
            assert outcomes == [True]  # open: the local bucket
            assert not fleet.up
            assert metrics.namespace("kv").fleet_fallbacks("open").value == 1


def test_fleetlimit_redis_client_is_loaded_only_for_a_fleet() -> None:
    """coredis alone adds ~20 MiB to the proxy's resident size: a proxy without fleet limits
    (the embedded default) must not import it."""
    import subprocess
    import sys

    code = (
        "import sys, prism.proxy.app, prism.cli.main\n"
        "assert 'coredis' not in sys.modules, 'coredis imported without a fleet limit'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
