"""Hot reload under load: 10 reloads while 32 callers write for 10 s — not one failed request,
not one lost write. sqlite, because it is durable: memstore's data lives in its instance."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from host_testkit import EXECUTE_STREAM, HERE, namespace, proxy_config, result, running_proxy
from prism_plugin_sqlite.plugin import SqlitePlugin

from prism import grpc as pg
from prism._proto.prism.data.v1 import (
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    SetRequest,
    SubscribeRequest,
)
from prism._proto.prism.proxy.v1 import StreamRequest, StreamResponse
from prism.grpc.health import ServingStatus
from prism.hosting.host import PluginStartFailed
from prism.sdk import OperationContext, operation
from prism.sdk.typed import pack

CALLERS = 32
RELOADS = 10
DURATION = 10.0

log = logging.getLogger(__name__)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_host_reload_under_load_loses_nothing(mode: str, tmp_path: Path) -> None:
    ns = namespace(
        "durable", "sqlite", mode, config={"path": str(tmp_path / "durable.sqlite3")}, drain_grace=5
    )
    async with running_proxy(proxy_config(ns)) as running:
        host = running.proxy.host
        first = host.route("durable").current
        assert first is not None
        acknowledged: list[list[str]] = [[] for _ in range(CALLERS)]
        failures: list[tuple[str, BaseException]] = []
        reload_times: list[float] = []
        stop = trio.Event()

        async def caller(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"c{i:02d}/{n:06d}"
                try:
                    with trio.fail_after(10):
                        await running.execute(
                            "durable", "set", SetRequest(key=key, value=key.encode())
                        )
                except Exception as exc:
                    failures.append((key, exc))
                    continue
                acknowledged[i].append(key)

        async def reloader() -> None:
            interval = DURATION / (RELOADS + 1)
            for _ in range(RELOADS):
                await trio.sleep(interval)
                started = trio.current_time()
                await host.reload("durable")
                reload_times.append(trio.current_time() - started)

        # Only a hang fails this: each reload is bounded by its startup_timeout and drain_grace.
        with trio.fail_after(DURATION + RELOADS * 60):
            async with trio.open_nursery() as nursery:
                for i in range(CALLERS):
                    nursery.start_soon(caller, i)
                nursery.start_soon(reloader)
                await trio.sleep(DURATION)
                while len(reload_times) < RELOADS:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                stop.set()

        current = host.route("durable").current
        assert current is not None
        assert current.generation == first.generation + RELOADS
        assert running.proxy.health.get("prism.namespace/durable") == ServingStatus.SERVING
        written = sum(len(keys) for keys in acknowledged)
        log.warning(
            "%s: %d reloads (%.2f-%.2f s each) under %d callers; %d writes acknowledged",
            mode,
            len(reload_times),
            min(reload_times),
            max(reload_times),
            CALLERS,
            written,
        )
        assert failures == []
        assert written > CALLERS * RELOADS

        # Every acknowledged write is there, read back through the proxy.
        for i, keys in enumerate(acknowledged):
            listed = result(
                await running.execute(
                    "durable", "list_keys", ListKeysRequest(prefix=f"c{i:02d}/", limit=10_000)
                ),
                ListKeysResponse,
            )
            assert not listed.truncated
            missing = set(keys) - set(listed.keys)
            assert not missing, f"caller {i} lost {len(missing)} acknowledged writes"
            for key in (keys[0], keys[len(keys) // 2], keys[-1]):
                got = result(
                    await running.execute("durable", "get", GetRequest(key=key)), GetResponse
                )
                assert (got.found, got.value) == (True, key.encode())


async def test_host_reload_failure_keeps_the_old_instance_serving(tmp_path: Path) -> None:
    ns = namespace("durable", "sqlite", "in_process", config={"path": str(tmp_path / "d.db")})
    async with running_proxy(proxy_config(ns)) as running:
        host = running.proxy.host
        old = host.route("durable").current
        await running.execute("durable", "set", SetRequest(key="k", value=b"v"))
        (tmp_path / "file").write_text("not a directory")
        broken = ns.replace(config={"path": str(tmp_path / "file" / "d.db")})
        with pytest.raises(PluginStartFailed, match="namespace 'durable': plugin 'sqlite'"):
            await host.reload("durable", broken)
        assert host.route("durable").current is old
        assert host.route("durable").config is ns
        got = await running.execute("durable", "get", GetRequest(key="k"))
        assert result(got, GetResponse).value == b"v"


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_host_reload_ends_open_streams_instead_of_waiting_for_them(mode: str) -> None:
    # drain_grace is long: a reload that waited for the subscription would take all of it.
    ns = namespace("kv", "memstore", mode, drain_grace=30)
    async with running_proxy(proxy_config(ns)) as running:
        async with running.channel.stream(EXECUTE_STREAM, StreamResponse) as call:
            await call.send_message(
                StreamRequest(
                    namespace="kv",
                    operation="subscribe",
                    typed_params=pack(SubscribeRequest(topic="t")),
                )
            )
            old = running.proxy.host.route("kv").current
            assert old is not None
            with trio.fail_after(10):
                while old.in_flight == 0:  # noqa: ASYNC110 - the stream reached the route
                    await trio.sleep(0.01)
                await running.proxy.host.reload("kv")
                # The old instance's Shutdown ended the subscription: the client resubscribes.
                with pytest.raises(pg.Unavailable, match="shutting down"):
                    await call.receive_message()
        await running.execute("kv", "set", SetRequest(key="after", value=b"1"))


class ClosingSqlite(SqlitePlugin):
    """sqlite with an operation that outlives any drain, and a ``shutdown`` hook that leaves a
    mark once the database is closed."""

    name = "closing-sqlite"

    async def initialize(self, config: Any, credentials: Mapping[str, str], namespace: str) -> None:
        self._marker = Path(config.path + ".closed")
        await super().initialize(config, credentials, namespace)

    @operation("stall", params=bytes, result=bytes)
    async def stall(self, params: bytes, ctx: OperationContext) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def shutdown(self, grace_seconds: float) -> None:
        await super().shutdown(grace_seconds)
        self._marker.write_text("closed")


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_host_reload_lets_sqlite_shutdown_finish_despite_a_stuck_call(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sidecar imports this module by name.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    db = tmp_path / "d.db"
    ns = namespace(
        "durable",
        f"{Path(__file__).stem}:ClosingSqlite",
        mode,
        config={"path": str(db)},
        drain_grace=2,
        health_interval=3600,
    )
    async with running_proxy(proxy_config(ns)) as running:
        old = running.proxy.host.route("durable").current
        assert old is not None
        await running.execute("durable", "set", SetRequest(key="k", value=b"v"))
        outcome: list[BaseException] = []

        async def stuck() -> None:
            try:
                await running.execute("durable", "stall", b"")
            except pg.GrpcError as exc:
                outcome.append(exc)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stuck)
                while old.in_flight == 0:  # noqa: ASYNC110 - the call reached the plugin
                    await trio.sleep(0.01)
                await running.proxy.host.reload("durable")
                # The old instance's Shutdown cut the stuck call short (its share of the grace),
                # then ran the plugin's shutdown hook to its end: the database was closed.
                while not (tmp_path / "d.db.closed").exists():  # noqa: ASYNC110
                    await trio.sleep(0.01)
        assert [type(e) for e in outcome] == [pg.Unavailable]
        got = await running.execute("durable", "get", GetRequest(key="k"))
        assert result(got, GetResponse).value == b"v"
