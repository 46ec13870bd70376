"""A sidecar killed with SIGKILL while callers hammer it: nobody hangs, everybody gets an
answer or UNAVAILABLE at once, and the plugin is back, served by its warm standby. (How fast
is measured by ``python -m bench plugins``'s recovery scenario, not here.)"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from host_testkit import (
    Certs,
    Running,
    free_port,
    namespace,
    pid_alive,
    proxy_config,
    remote_service,
    result,
    running_proxy,
)

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism.grpc.health import ServingStatus
from prism.hosting.sidecar import SidecarModel
from prism.sdk import BackendPlugin, OperationContext, operation

CALLERS = 16
#: Only a hang fails a call: a call during the restart gets UNAVAILABLE instead of waiting.
CALL_BOUND = 10.0

log = logging.getLogger(__name__)


@dataclass
class Outcomes:
    ok: int = 0
    unavailable: int = 0
    other: list[BaseException] = field(default_factory=list)
    slowest: float = 0.0
    first_success_after_kill: float | None = None


@pytest.mark.slow
async def test_host_sidecar_sigkill_under_load_fails_fast_and_recovers() -> None:
    config = proxy_config(namespace("kv", "memstore", "sidecar"))
    async with running_proxy(config) as running:
        route = running.proxy.host.route("kv")
        instance = route.current
        assert instance is not None
        model = running.proxy.host.models[instance]
        assert isinstance(model, SidecarModel)
        assert model.pool is not None
        with trio.fail_after(60):  # the standby is launched once the first process serves
            while model.pool.standby is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        standby_pid = model.pool.standby.process.pid
        outcomes = Outcomes()
        killed_at: float | None = None
        stop = trio.Event()

        async def caller(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"c{i}-{n}"
                started = trio.current_time()
                try:
                    with trio.fail_after(CALL_BOUND):  # a hang fails the test, not blocks it
                        await running.execute("kv", "set", SetRequest(key=key, value=b"x"))
                        got = await running.execute("kv", "get", GetRequest(key=key))
                    assert result(got, GetResponse).found
                    outcomes.ok += 1
                    if (
                        killed_at is not None
                        and started > killed_at
                        and outcomes.first_success_after_kill is None
                    ):
                        outcomes.first_success_after_kill = trio.current_time() - killed_at
                except pg.Unavailable:
                    outcomes.unavailable += 1
                    await trio.sleep(0.01)  # as a client's retry policy would
                except Exception as exc:
                    outcomes.other.append(exc)
                outcomes.slowest = max(outcomes.slowest, trio.current_time() - started)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(CALLERS):
                    nursery.start_soon(caller, i)
                await trio.sleep(0.5)
                assert outcomes.ok > 0
                pid = instance.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed_at = trio.current_time()
                while outcomes.first_success_after_kill is None:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await trio.sleep(0.5)  # and it keeps serving
                stop.set()
            # Every caller returned (the nursery closed): nothing is left hanging.

        log.warning(
            "sidecar SIGKILL under load: back after %.3f s; %d ok, %d UNAVAILABLE, "
            "slowest call %.3f s",
            outcomes.first_success_after_kill,
            outcomes.ok,
            outcomes.unavailable,
            outcomes.slowest,
        )
        assert outcomes.other == []
        assert outcomes.unavailable > 0  # the gap was answered, not waited through
        assert outcomes.first_success_after_kill is not None
        assert route.current is instance  # the same instance, restarted in place
        assert instance.pid == standby_pid  # Initialize went to the warm standby
        with trio.fail_after(60):  # and a new standby is launched behind it
            while model.pool.standby is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert model.pool.standby.process.pid not in (pid, standby_pid)
        assert not pid_alive(pid)
        assert instance.restarts == 1
        assert instance.in_flight == 0
        assert running.proxy.health.get("prism.namespace/kv") == ServingStatus.SERVING


class Exploding(BackendPlugin):
    """An in-process plugin whose background task crashes on request."""

    name = "exploding"

    @operation("ping", params=bytes, result=bytes)
    async def ping(self, params: bytes, ctx: OperationContext) -> bytes:
        return b"pong"

    @operation("explode", params=bytes, result=bytes)
    async def explode(self, params: bytes, ctx: OperationContext) -> bytes:
        self.nursery.start_soon(self._crash)
        return b""

    async def _crash(self) -> None:
        raise RuntimeError("the backend connection task died")


async def test_host_in_process_plugin_crash_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    ns = namespace("boom", f"{Path(__file__).stem}:Exploding", "in_process")
    async with running_proxy(proxy_config(ns)) as running:
        instance = running.proxy.host.route("boom").current
        assert instance is not None
        assert (await running.execute("boom", "ping", b"")).raw_result == b"pong"
        await running.execute("boom", "explode", b"")
        unavailable = 0
        with trio.fail_after(30):
            while True:
                try:
                    response = await running.execute("boom", "ping", b"")
                except pg.Unavailable:
                    unavailable += 1
                    await trio.sleep(0.01)
                    continue
                if instance.restarts:
                    break
                await trio.sleep(0.01)
        assert response.raw_result == b"pong"
        assert instance.restarts == 1
        assert unavailable > 0  # the gap was answered with UNAVAILABLE, not a hang
        assert route_is(running, "boom", instance)
    assert any(
        "plugin 'test_host_crash:Exploding' failed" in r.getMessage()
        and "restarting in" in r.getMessage()
        for r in caplog.records
    )


def route_is(running: Running, name: str, instance: object) -> bool:
    return running.proxy.host.route(name).current is instance


@pytest.mark.slow
async def test_host_remote_service_restart_is_reinitialized(tmp_path: Path) -> None:
    port = free_port()
    certs = Certs.make(tmp_path)
    with remote_service(tmp_path, port=port, certs=certs) as service:
        ns = service.namespace("far", health_interval=0.2)
        async with running_proxy(proxy_config(ns)) as running:
            instance = running.proxy.host.route("far").current
            assert instance is not None
            await running.execute("far", "set", SetRequest(key="k", value=b"1"))
            service.process.send_signal(signal.SIGTERM)
            service.process.wait(10)
            with trio.fail_after(30):
                while instance.available:  # noqa: ASYNC110 - the health loop notices
                    await trio.sleep(0.02)
            assert running.proxy.health.get("prism.namespace/far") == ServingStatus.NOT_SERVING
            with pytest.raises(pg.Unavailable):
                await running.execute("far", "get", GetRequest(key="k"))
            with remote_service(tmp_path, port=port, certs=certs):
                with trio.fail_after(30):
                    while not instance.available:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                # A fresh service: a fresh plugin instance, initialized again by the proxy.
                got = await running.execute("far", "get", GetRequest(key="k"))
                assert not result(got, GetResponse).found
                await running.execute("far", "set", SetRequest(key="k", value=b"2"))
                got = await running.execute("far", "get", GetRequest(key="k"))
                assert result(got, GetResponse).value == b"2"
                assert running.proxy.health.get("prism.namespace/far") == ServingStatus.SERVING
