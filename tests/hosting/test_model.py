"""Health decides routing (``prism.hosting.model``): a plugin that reports UNHEALTHY, or does not
answer its health check in time, is taken out of routing (UNAVAILABLE with the reason) and
restarted; DEGRADED stays routed and shows in the namespace's status. In-process and sidecar;
the plugin double is served from this module (``module:Class``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from host_testkit import HERE, Running, namespace, proxy_config, running_proxy

from prism import grpc as pg
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus
from prism.grpc.health import ServingStatus
from prism.proxy.admin import AdminService
from prism.sdk import BackendPlugin, HealthReport, HealthStatus, OperationContext, operation


class Moody(BackendPlugin):
    """Its health is whatever it was last told; ``hang`` makes its health check never answer.
    A fresh object (a restart) starts HEALTHY."""

    name = "moody"
    config_required = False

    def __init__(self) -> None:
        super().__init__()
        self.status = HealthStatus.HEALTHY
        self.hang = False

    @operation("ping", params=bytes, result=bytes)
    async def ping(self, params: bytes, ctx: OperationContext) -> bytes:
        return b"pong"

    @operation("feel", params=bytes, result=bytes)
    async def feel(self, params: bytes, ctx: OperationContext) -> bytes:
        if params == b"hang":
            self.hang = True
        else:
            self.status = HealthStatus[params.decode()]
        return b""

    async def health(self) -> HealthReport:
        if self.hang:
            await trio.sleep_forever()
        return HealthReport(self.status, f"feeling {self.status.name.lower()}")


MOODY = f"{Path(__file__).stem}:Moody"


@pytest.fixture(params=["in_process", "sidecar"])
async def moody(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Running:
    # The sidecar imports this module by name.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    ns = namespace("moody", MOODY, request.param, health_interval=0.1)
    async with running_proxy(proxy_config(ns)) as running:
        yield running  # type: ignore[misc]


async def wait_until_down(running: Running) -> str:
    """The UNAVAILABLE message calls get once the instance is out of routing."""
    with trio.fail_after(30):
        while True:
            try:
                await running.execute("moody", "ping", b"")
            except pg.Unavailable as exc:
                return exc.message
            await trio.sleep(0.01)


async def wait_until_serving(running: Running) -> None:
    with trio.fail_after(60):
        while True:
            try:
                if (await running.execute("moody", "ping", b"")).raw_result == b"pong":
                    return
            except pg.Unavailable:
                pass
            await trio.sleep(0.01)


@pytest.mark.parametrize("trouble", ["UNHEALTHY", "hang"])
async def test_model_unhealthy_plugin_leaves_routing_and_is_restarted(
    moody: Running, trouble: str
) -> None:
    instance = moody.proxy.host.route("moody").current
    assert instance is not None
    await moody.execute("moody", "feel", trouble.encode())
    await wait_until_down(moody)  # UNAVAILABLE (a call in flight may see the restart instead)
    expected = (
        "the plugin reported UNHEALTHY: feeling unhealthy"
        if trouble == "UNHEALTHY"
        else "health check not answered within 2 s"
    )
    assert expected in instance.down_reason or instance.restarts >= 1
    await wait_until_serving(moody)  # restarted: a fresh plugin object, healthy
    assert instance.restarts >= 1
    assert moody.proxy.host.route("moody").current is instance
    assert moody.proxy.health.get("prism.namespace/moody") == ServingStatus.SERVING


async def test_model_degraded_plugin_stays_routed_and_shows_in_status(moody: Running) -> None:
    instance = moody.proxy.host.route("moody").current
    assert instance is not None
    await moody.execute("moody", "feel", b"DEGRADED")
    with trio.fail_after(30):
        while instance.health is None or instance.health.status != HealthStatus.DEGRADED:  # noqa: ASYNC110
            await trio.sleep(0.02)
    for _ in range(5):  # several health intervals: still routed, never restarted
        assert (await moody.execute("moody", "ping", b"")).raw_result == b"pong"
        await trio.sleep(0.1)
    assert instance.restarts == 0
    assert moody.proxy.health.get("prism.namespace/moody") == ServingStatus.SERVING
    status = AdminService(moody.proxy.host).status(moody.proxy.host.route("moody"))
    assert status.available
    assert status.last_health.status == HealthCheckResponseStatus.DEGRADED
    assert status.last_health.message == "feeling degraded"
