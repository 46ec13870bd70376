"""Disable and enable a namespace through the admin API (gRPC and HTTP), on a real proxy with
a sidecar plugin process: disabled = UNAVAILABLE at once, its process gone; enabled = a new
instance serving."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from host_testkit import execute, pid_alive

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    DisableNamespaceRequest,
    EnableNamespaceRequest,
    GetNamespaceRequest,
    GetStatusRequest,
    NamespaceStatus,
    ProxyStatus,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig
from prism.config.auth import AccessConfig
from prism.proxy.app import Proxy

ADMIN = "/prism.admin.v1.Admin/"
TOKEN = "enable-disable-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
HEADERS = {"authorization": f"Bearer {TOKEN}"}
OPEN = AccessConfig(anonymous=True)


def config() -> ProxyConfig:
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=AdminConfig(listen="127.0.0.1:0", token=TOKEN),
        shutdown_grace=1.0,
        namespaces=(
            NamespaceConfig("side", PluginConfig("memstore", mode="sidecar"), access=OPEN),
            NamespaceConfig("kv", PluginConfig("memstore"), access=OPEN),
        ),
    )


@asynccontextmanager
async def running() -> AsyncIterator[tuple[Proxy, pg.Channel, pg.Channel, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config()).run)
        assert proxy.address is not None
        assert proxy.admin_address is not None
        admin = "{}:{}".format(*proxy.admin_address)
        async with (
            pg.open_channel("{}:{}".format(*proxy.address)) as front,
            pg.open_channel(admin) as channel,
            httpx.AsyncClient(base_url=f"http://{admin}", headers=HEADERS, timeout=30) as http,
        ):
            with trio.fail_after(60):
                yield proxy, front, channel, http
        nursery.cancel_scope.cancel()


async def admin_call(channel: pg.Channel, method: str, request: object, reply: type) -> object:
    return await channel.unary_unary(ADMIN + method, request, reply, metadata=AUTH)


def sidecar_pid(proxy: Proxy) -> int:
    instance = proxy.host.route("side").current
    assert instance is not None
    assert instance.pid is not None
    return instance.pid


async def test_admin_disable_stops_the_plugin_and_answers_unavailable_then_enable_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running() as (proxy, front, channel, _):
        await execute(front, "side", "set", SetRequest(key="k", value=b"v"))
        pid = sidecar_pid(proxy)
        status = await admin_call(
            channel, "DisableNamespace", DisableNamespaceRequest(namespace="side"), NamespaceStatus
        )
        assert isinstance(status, NamespaceStatus)
        assert (status.disabled, status.available, status.generation) == (True, False, 0)
        assert status.unavailable_reason == "disabled by an operator"
        assert not pid_alive(pid)  # drained and shut down before the answer
        with pytest.raises(pg.Unavailable, match="namespace 'side' is disabled by an operator"):
            await execute(front, "side", "get", GetRequest(key="k"))
        await execute(front, "kv", "set", SetRequest(key="k", value=b"v"))  # others serve
        # Disabling again changes nothing; a reload is refused while disabled.
        again = await admin_call(
            channel, "DisableNamespace", DisableNamespaceRequest(namespace="side"), NamespaceStatus
        )
        assert isinstance(again, NamespaceStatus)
        assert again.disabled
        with pytest.raises(pg.FailedPrecondition, match="is disabled by an operator; enable it"):
            await admin_call(
                channel,
                "ReloadNamespace",
                ReloadNamespaceRequest(namespace="side"),
                ReloadNamespaceResponse,
            )
        proxy_status = await admin_call(channel, "GetStatus", GetStatusRequest(), ProxyStatus)
        assert isinstance(proxy_status, ProxyStatus)
        assert proxy_status.disabled == ["side"]

        enabled = await admin_call(
            channel, "EnableNamespace", EnableNamespaceRequest(namespace="side"), NamespaceStatus
        )
        assert isinstance(enabled, NamespaceStatus)
        assert (enabled.disabled, enabled.available) == (False, True)
        assert enabled.generation > 0
        assert sidecar_pid(proxy) != pid
        await execute(front, "side", "set", SetRequest(key="k", value=b"v2"))
        got = await admin_call(
            channel, "GetNamespace", GetNamespaceRequest(name="side"), NamespaceStatus
        )
        assert isinstance(got, NamespaceStatus)
        assert not got.disabled
        with pytest.raises(pg.NotFound):
            await admin_call(
                channel, "DisableNamespace", DisableNamespaceRequest(namespace="x"), NamespaceStatus
            )
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "prism.audit"]
    assert [(r["action"], r["target"], r["status"]) for r in audit] == [
        ("disable", "side", "OK"),
        ("disable", "side", "OK"),
        ("reload", "side", "FAILED_PRECONDITION"),
        ("enable", "side", "OK"),
        ("disable", "x", "NOT_FOUND"),
    ]


async def test_admin_http_json_api_lists_disables_enables_and_reloads() -> None:
    async with running() as (proxy, front, _, http):
        listed = (await http.get("/admin/plugin/list")).json()
        assert [ns["name"] for ns in listed["namespaces"]] == ["side", "kv"]
        reply = await http.post("/admin/plugin/disable", json={"namespace": "kv"})
        assert reply.status_code == 200, reply.text
        assert (reply.json()["disabled"], reply.json()["available"]) == (True, False)
        with pytest.raises(pg.Unavailable, match="'kv' is disabled by an operator"):
            await execute(front, "kv", "get", GetRequest(key="k"))
        status = (await http.get("/admin/plugin/status", params={"namespace": "kv"})).json()
        assert status["disabled"] is True
        assert (await http.get("/admin/status")).json()["disabled"] == ["kv"]
        conflict = await http.post("/admin/plugin/reload", json={"namespace": "kv"})
        assert conflict.status_code == 409
        assert "enable it" in conflict.json()["error"]

        reply = await http.post("/admin/plugin/enable", json={"namespace": "kv"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["available"] is True
        await execute(front, "kv", "set", SetRequest(key="k", value=b"v"))
        reloaded = await http.post("/admin/plugin/reload", json={"namespace": "side"})
        assert reloaded.status_code == 200, reloaded.text
        body = reloaded.json()
        assert body["generation"] == body["namespace"]["generation"]
        assert body["generation"] == sidecar_generation(proxy)

        # The RFC's errors, as HTTP codes.
        missing = await http.post("/admin/plugin/reload", json={"namespace": "nope"})
        assert (missing.status_code, missing.json()) == (404, {"error": "unknown namespace 'nope'"})
        assert (await http.post("/admin/plugin/reload", json={})).status_code == 400
        assert (await http.post("/admin/plugin/reload", content=b"{not json")).status_code == 400
        assert (await http.get("/admin/plugin/reload")).status_code == 405
        # A proxy built in code has no file to re-read.
        no_file = await http.post("/admin/config/reload", json={})
        assert no_file.status_code == 409
        assert "not read from a file" in no_file.json()["error"]


def sidecar_generation(proxy: Proxy) -> int:
    instance = proxy.host.route("side").current
    assert instance is not None
    return instance.generation
