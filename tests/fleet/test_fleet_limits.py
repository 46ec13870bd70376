"""Fleet rate limits across three proxies on loopback sharing one real redis-server: the
fleet's limit holds within 10% over 10 s, and when Redis is killed each namespace follows its
``on_redis_failure`` (open: the local bucket; closed: RESOURCE_EXHAUSTED), logged once per
proxy, and the fleet limit is back when Redis returns."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from fleet_testkit import document, ns, set_
from redis_process import RedisProcess, redis_process

from prism import grpc as pg
from prism.config import ProxyConfig, load_config, parse_config
from prism.grpc.wire.status import GrpcError, Status
from prism.proxy.app import Proxy
from prism.proxy.configreload import ConfigRejected

PASSWORD = "fleet-limits-test"


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with redis_process(PASSWORD) as server:
        yield server


def limited(name: str, **rate_limit: Any) -> dict[str, Any]:
    # max_wait: three proxies and their clients share this test's one thread, so a Redis
    # answer can wait behind them longer than the default 50 ms.
    rate_limit = {"scope": "fleet", "max_wait": 2.0, **rate_limit}
    return {**ns(name), "traffic": {"rate_limit": rate_limit}}


def fleet_config(redis: RedisProcess, *namespaces: dict[str, Any]) -> ProxyConfig:
    # A slow answer on this shared, busy machine is not an outage (call_timeout); probes come
    # back quickly once Redis does (reconnect_max).
    settings = {"address": redis.address, "password": PASSWORD, "call_timeout": 2.0}
    fleet = {"redis": {**settings, "reconnect_max": 0.5}}
    return parse_config(json.loads(document(*namespaces, fleet=fleet)))


@asynccontextmanager
async def three_proxies(config: ProxyConfig) -> AsyncIterator[list[tuple[Proxy, pg.Channel]]]:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        fleet = []
        for _ in range(3):
            proxy: Proxy = await nursery.start(Proxy(config).run)
            assert proxy.address is not None
            channel = await stack.enter_async_context(
                pg.open_channel("{}:{}".format(*proxy.address))
            )
            fleet.append((proxy, channel))
        yield fleet
        nursery.cancel_scope.cancel()


async def attempt(front: pg.Channel, namespace: str) -> str | None:
    """One call: None when it was served, the message when a limit refused it."""
    try:
        await set_(front, namespace, "k", b"v")
    except GrpcError as exc:
        if exc.status != Status.RESOURCE_EXHAUSTED:
            raise
        return exc.message
    return None


def redis_up(proxy: Proxy) -> bool:
    return proxy.metrics.fleet_redis_up.labels().value == 1


async def test_fleet_limit_holds_across_three_proxies(redis: RedisProcess) -> None:
    rate, warmup, window = 50.0, 1.0, 10.0
    config = fleet_config(redis, limited("kv", rate=rate, burst=10, max_batch=5))
    accepted = refused = 0
    with trio.fail_after(120):
        async with three_proxies(config) as fleet:
            start = trio.current_time()
            begin, end = start + warmup, start + warmup + window

            async def client(front: pg.Channel) -> None:
                nonlocal accepted, refused
                while trio.current_time() < end:
                    outcome = await attempt(front, "kv")
                    if begin <= trio.current_time() < end:
                        if outcome is None:
                            accepted += 1
                        else:
                            refused += 1
                    if outcome is not None:
                        assert "fleet limit" in outcome, outcome
                        await trio.sleep(0.002)  # a refused client backs off a little

            async with trio.open_nursery() as clients:
                for _, front in fleet:
                    for _ in range(4):
                        clients.start_soon(client, front)
            redis_calls = sum(p.metrics.namespace("kv").fleet_redis_calls.value for p, _ in fleet)
            fallbacks = sum(
                p.metrics.namespace("kv").fleet_fallbacks("open").value for p, _ in fleet
            )
    expected = rate * window
    assert refused > 0  # the clients asked for more than the limit
    assert fallbacks == 0
    assert 0.9 * expected <= accepted <= 1.1 * expected, (accepted, refused, redis_calls)


async def test_fleet_limit_falls_back_while_redis_is_down(
    redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "prism.proxy.fleetlimit")
    config = fleet_config(
        redis,
        limited("open", rate=2, burst=20, max_batch=2, fallback_rate=1000),
        limited("closed", rate=1000, max_batch=1, on_redis_failure="closed"),
    )
    with trio.fail_after(120):
        async with three_proxies(config) as fleet:
            # Redis up: the fleet's limit (20 at once for the three, then 2 a second).
            outcomes = [await attempt(front, "open") for _, front in fleet for _ in range(40)]
            assert sum(o is None for o in outcomes) <= 20 + 3 * 2 + 10
            assert any(o is not None and "fleet limit" in o for o in outcomes)
            assert [await attempt(front, "closed") for _, front in fleet] == [None] * 3

            redis.kill()
            for proxy, front in fleet:
                # A proxy learns of the outage from its next call to Redis: until then, a call
                # it has no token for is refused as Redis last said (retry in ...).
                while redis_up(proxy):
                    await attempt(front, "open")
                    await trio.sleep(0.01)
            # open: each proxy's own bucket (fallback_rate 1000, burst 20) serves every call.
            for _, front in fleet:
                assert [await attempt(front, "open") for _ in range(20)] == [None] * 20
            # closed: refused (a token in hand before the kill may still serve one call).
            for _, front in fleet:
                outcomes = [await attempt(front, "closed") for _ in range(3)]
                assert outcomes[-1] is not None
                assert "on_redis_failure: closed" in outcomes[-1]
            for proxy, _ in fleet:
                series = proxy.metrics.namespace("open")
                assert series.fleet_fallbacks("open").value >= 20
                assert proxy.metrics.namespace("closed").fleet_fallbacks("closed").value >= 1
                assert not redis_up(proxy)

            redis.start()  # the same port, empty
            while not all(redis_up(proxy) for proxy, _ in fleet):  # noqa: ASYNC110 - as /metrics shows it
                await trio.sleep(0.05)
            assert [await attempt(front, "closed") for _, front in fleet] == [None] * 3
            outcomes = [await attempt(front, "open") for _, front in fleet for _ in range(40)]
            assert any(o is not None and "fleet limit" in o for o in outcomes)  # the fleet's again
            assert sum(o is None for o in outcomes) <= 20 + 3 * 2 + 10
    messages = [record.getMessage() for record in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 3  # once per proxy, not per call
    assert sum("answers again" in m for m in messages) == 3
    assert PASSWORD not in caplog.text


async def test_fleet_limit_comes_and_goes_with_a_config_reload(
    redis: RedisProcess, tmp_path: Path
) -> None:
    path = tmp_path / "prism.yaml"
    fleet = {"redis": {"address": redis.address, "password": PASSWORD, "call_timeout": 2.0}}
    path.write_bytes(document(ns("kv"), fleet=fleet))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proxy: Proxy = await nursery.start(Proxy(load_config(path), config_path=path).run)
            assert proxy.address is not None
            async with pg.open_channel("{}:{}".format(*proxy.address)) as front:
                assert await attempt(front, "kv") is None
                path.write_bytes(document(limited("kv", rate=0.001, burst=3), fleet=fleet))
                await proxy.reload_config()
                outcomes = [await attempt(front, "kv") for _ in range(5)]
                assert outcomes[:3] == [None] * 3  # the fleet's bucket, in Redis
                assert outcomes[3] is not None
                assert "fleet limit" in outcomes[3]
                assert proxy.metrics.namespace("kv").fleet_tokens.value == 3
            nursery.cancel_scope.cancel()


async def test_fleet_limit_needs_a_restart_to_get_its_redis(tmp_path: Path) -> None:
    path = tmp_path / "prism.yaml"
    path.write_bytes(document(ns("kv")))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proxy: Proxy = await nursery.start(Proxy(load_config(path), config_path=path).run)
            assert proxy.address is not None
            async with pg.open_channel("{}:{}".format(*proxy.address)) as front:
                fleet = {"redis": {"address": "127.0.0.1:6379"}}
                path.write_bytes(document(limited("kv", rate=1), fleet=fleet))
                with pytest.raises(ConfigRejected) as rejected:
                    await proxy.reload_config()
                assert "a fleet limit needs fleet.redis" in rejected.value.message
                assert await attempt(front, "kv") is None  # the old config keeps serving
            nursery.cancel_scope.cancel()
