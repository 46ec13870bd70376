"""metrics.listen on a real proxy: /metrics and /healthz over HTTP without credentials, and
nothing of the admin API; its connection cap; off by default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from prism import grpc as pg
from prism._proto.prism.data.v1 import SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import ConfigError, NamespaceConfig, PluginConfig, ProxyConfig, parse_config
from prism.proxy.app import Proxy
from prism.sdk.typed import pack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"


def config(**metrics: object) -> ProxyConfig:
    return parse_config(
        {
            "listen": "127.0.0.1:0",
            # A token nobody sends: the admin API refuses every caller here.
            "admin": {"listen": "127.0.0.1:0", "token": "not-sent-by-these-tests"},
            "metrics": {"listen": "127.0.0.1:0", **metrics},
            "shutdown_grace": 1,
            "namespaces": [
                {"name": "kv", "plugin": {"name": "memstore"}, "access": {"anonymous": True}}
            ],
        }
    )


@asynccontextmanager
async def running(cfg: ProxyConfig) -> AsyncIterator[tuple[Proxy, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(cfg).run)
        assert proxy.metrics_address is not None
        base = "http://{}:{}".format(*proxy.metrics_address)
        async with httpx.AsyncClient(base_url=base) as client:
            yield proxy, client
        nursery.cancel_scope.cancel()


async def test_metricsport_serves_metrics_and_healthz_without_credentials() -> None:
    async with running(config()) as (proxy, client):
        assert proxy.address is not None
        async with pg.open_channel("{}:{}".format(*proxy.address)) as channel:
            request = ExecuteRequest(
                namespace="kv", operation="set", typed_params=pack(SetRequest(key="a", value=b"1"))
            )
            await channel.unary_unary(EXECUTE, request, ExecuteResponse)
        reply = await client.get("/metrics")
        assert reply.status_code == 200
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.text)
            for s in family.samples
        }
        key = frozenset({"namespace": "kv", "operation": "set", "status": "OK"}.items())
        assert samples[("prism_requests_total", key)] == 1
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "SERVING", "namespaces": {"kv": "SERVING"}}
        # The admin port, same proxy: /metrics there needs the token.
        assert proxy.admin_address is not None
        admin = await client.get("http://{}:{}/metrics".format(*proxy.admin_address))
        assert admin.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/status"),
        ("GET", "/admin/plugin/list"),
        ("POST", "/admin/plugin/reload"),
        ("POST", "/admin/plugin/disable"),
        ("POST", "/admin/config/reload"),
    ],
)
async def test_metricsport_has_no_admin_routes(method: str, path: str) -> None:
    async with running(config()) as (proxy, client):
        reply = await client.request(method, path, json={"namespace": "kv"})
        assert reply.status_code == 404
        # Nothing happened to the namespace.
        assert (await client.get("/healthz")).json()["namespaces"] == {"kv": "SERVING"}
        assert proxy.namespace_status("kv") is not None


async def test_metricsport_closes_connections_beyond_its_cap() -> None:
    async with running(config(max_connections=2)) as (proxy, client):
        assert proxy.metrics_address is not None
        host, port = proxy.metrics_address
        held = [await trio.open_tcp_stream(host, port) for _ in range(2)]
        # Wait until both count as open (the accept loop has taken them).
        with trio.fail_after(30):
            while proxy.metrics_port is not None and proxy.metrics_port._open < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        extra = await trio.open_tcp_stream(host, port)
        with trio.fail_after(30):
            assert await extra.receive_some(100) == b""  # closed without an answer
        for stream in held:
            await stream.aclose()
        await extra.aclose()
        # Once they are closed, the port answers again.
        with trio.fail_after(30):
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await trio.sleep(0.01)


async def test_metricsport_is_off_by_default() -> None:
    cfg = ProxyConfig(
        listen="127.0.0.1:0",
        admin={"enabled": False},
        namespaces=(NamespaceConfig("kv", PluginConfig("memstore"), access={"anonymous": True}),),
    )
    assert cfg.metrics.listen is None
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(cfg).run)
        assert proxy.metrics_port is None
        assert proxy.metrics_address is None
        nursery.cancel_scope.cancel()


def test_metricsport_address_is_checked_by_the_config() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"metrics": {"listen": "no-port-here"}})
    assert any("metrics.listen" in e for e in raised.value.errors)
