"""The admin port's HTTP routes on a real proxy: /metrics scraped over HTTP and parsed with
prometheus-client's parser after real calls through the front door; /healthz."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.plugin.v1 import ExecuteResponse as PluginResponse
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig
from prism.proxy.app import Proxy
from prism.sdk import BackendPlugin, OperationContext, operation
from prism.sdk.typed import pack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Crashing(BackendPlugin):
    """An in-process plugin whose background task dies on request (the host restarts it)."""

    name = "crashing"

    @operation("ping", params=bytes, result=bytes)
    async def ping(self, params: bytes, ctx: OperationContext) -> bytes:
        return b"pong"

    @operation("crash", params=bytes, result=bytes)
    async def crash(self, params: bytes, ctx: OperationContext) -> bytes:
        self.nursery.start_soon(self._die)
        return b""

    async def _die(self) -> None:
        raise RuntimeError("the backend connection task died")


def config(*namespaces: NamespaceConfig) -> ProxyConfig:
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=AdminConfig(listen="127.0.0.1:0"),
        shutdown_grace=1.0,
        namespaces=namespaces or (NamespaceConfig("kv", PluginConfig("memstore")),),
    )


@asynccontextmanager
async def running(cfg: ProxyConfig) -> AsyncIterator[tuple[Proxy, pg.Channel, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(cfg).run)
        assert proxy.address is not None
        assert proxy.admin_address is not None
        base = "http://{}:{}".format(*proxy.admin_address)
        async with (
            pg.open_channel("{}:{}".format(*proxy.address)) as channel,
            httpx.AsyncClient(base_url=base) as client,
        ):
            yield proxy, channel, client
        nursery.cancel_scope.cancel()


async def scrape(client: httpx.AsyncClient) -> Samples:
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def call(channel: pg.Channel, namespace: str, operation: str, params: object) -> None:
    request = ExecuteRequest(namespace=namespace, operation=operation, typed_params=pack(params))
    await channel.unary_unary(EXECUTE, request, ExecuteResponse)


async def test_admin_http_metrics_count_front_door_requests_by_namespace_operation_status() -> None:
    async with running(config()) as (_, channel, client):
        await call(channel, "kv", "set", SetRequest(key="a", value=b"1"))
        for key in ("a", "a", "missing"):
            await call(channel, "kv", "get", GetRequest(key=key))
        with pytest.raises(pg.NotFound):
            await call(channel, "nope", "get", GetRequest(key="a"))
        with pytest.raises(pg.Unimplemented):
            await call(channel, "kv", "no-such-op", GetRequest(key="a"))
        samples = await scrape(client)

    total = "prism_requests_total"
    assert value(samples, total, namespace="kv", operation="set", status="OK") == 1
    assert value(samples, total, namespace="kv", operation="get", status="OK") == 3
    # Names a client made up never become labels.
    assert value(samples, total, namespace="_unknown", operation="_other", status="NOT_FOUND") == 1
    assert value(samples, total, namespace="kv", operation="_other", status="UNIMPLEMENTED") == 1
    assert not any("nope" in str(labels) or "no-such-op" in str(labels) for _, labels in samples)
    duration = "prism_request_duration_seconds"
    assert value(samples, duration + "_count", namespace="kv", operation="get") == 3
    assert value(samples, duration + "_bucket", namespace="kv", operation="get", le="+Inf") == 3
    assert value(samples, duration + "_sum", namespace="kv", operation="get") > 0  # type: ignore[operator]
    assert value(samples, "prism_requests_in_flight", namespace="kv") == 0


async def test_admin_http_metrics_include_the_plugins_polled_metrics() -> None:
    ns = NamespaceConfig("kv", PluginConfig("memstore", health_interval=3600))
    async with running(config(ns)) as (proxy, channel, client):
        await call(channel, "kv", "set", SetRequest(key="a", value=b"1"))
        await call(channel, "kv", "get", GetRequest(key="a"))  # a hit
        await call(channel, "kv", "get", GetRequest(key="b"))  # a miss
        instance = proxy.host.route("kv").current
        assert instance is not None
        assert await instance.poll_metrics() is not None  # what the poller does
        first = await scrape(client)
        await call(channel, "kv", "get", GetRequest(key="a"))
        await instance.poll_metrics()
        second = await scrape(client)

    assert value(first, "prism_plugin_requests_total", namespace="kv") == 3
    assert value(first, "prism_plugin_cache_hits_total", namespace="kv") == 1
    assert value(first, "prism_plugin_cache_misses_total", namespace="kv") == 1
    assert value(first, "prism_plugin_cache_hit_ratio", namespace="kv") == 0.5
    assert value(first, "prism_plugin_requests_per_second", namespace="kv") > 0  # type: ignore[operator]
    # Each interval is added once: 3 + 1, not 3 + 3 + 1.
    assert value(second, "prism_plugin_requests_total", namespace="kv") == 4
    assert value(second, "prism_plugin_metrics_polls_total", namespace="kv") == 2


async def test_admin_http_metrics_count_reloads_and_restarts() -> None:
    crashing = NamespaceConfig("boom", PluginConfig(f"{Path(__file__).stem}:Crashing"))
    async with running(config(NamespaceConfig("kv", PluginConfig("memstore")), crashing)) as (
        proxy,
        channel,
        client,
    ):
        await proxy.host.reload("kv")
        bad = NamespaceConfig("kv", PluginConfig("memstore"), config={"no_such_field": 1})
        with pytest.raises(Exception, match="no_such_field"):
            await proxy.host.reload("kv", bad)
        instance = proxy.host.route("boom").current
        assert instance is not None
        request = ExecuteRequest(namespace="boom", operation="crash", raw_params=b"")
        await channel.unary_unary(EXECUTE, request, PluginResponse)
        with trio.fail_after(30):
            while instance.restarts == 0:  # noqa: ASYNC110 - the host's restart loop
                await trio.sleep(0.01)
        samples = await scrape(client)

    assert value(samples, "prism_plugin_reloads_total", namespace="kv", result="ok") == 1
    assert value(samples, "prism_plugin_reloads_total", namespace="kv", result="failed") == 1
    assert value(samples, "prism_plugin_restarts_total", namespace="boom") == 1


async def test_admin_http_healthz_is_503_once_the_proxy_stops_serving() -> None:
    async with running(config()) as (proxy, _, client):
        assert (await client.get("/healthz")).status_code == 200
        proxy.health.shutdown()  # what Proxy.stop does first
        reply = await client.get("/healthz")
        assert reply.status_code == 503
        assert reply.json() == {"namespaces": {"kv": "NOT_SERVING"}, "status": "NOT_SERVING"}


async def test_admin_http_each_proxy_has_its_own_registry() -> None:
    async with running(config()) as (_, channel, first), running(config()) as (_, _c, second):
        await call(channel, "kv", "set", SetRequest(key="a", value=b"1"))
        one, other = await scrape(first), await scrape(second)
    key = {"namespace": "kv", "operation": "set", "status": "OK"}
    assert value(one, "prism_requests_total", **key) == 1
    assert value(other, "prism_requests_total", **key) is None
