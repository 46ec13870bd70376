"""The admin API over a real proxy: its own listener, real sockets, in-process plugins."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from prism import grpc as pg
from prism._proto.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from prism._proto.grpc.reflection import v1 as reflection
from prism._proto.prism.admin.v1 import (
    GetNamespaceRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    NamespaceStatus,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus, PluginMetrics
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import (
    AdminConfig,
    ConfigError,
    NamespaceConfig,
    PluginConfig,
    ProxyConfig,
)
from prism.grpc.health import ServingStatus
from prism.hosting.host import PluginStartFailed
from prism.proxy.admin import AdminService
from prism.proxy.app import ListenFailed, Proxy
from prism.sdk.typed import pack, unpack

ADMIN = "/prism.admin.v1.Admin/"


def make_config(data: Path, admin: AdminConfig | None = None, **plugin: Any) -> ProxyConfig:
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=admin or AdminConfig(listen="127.0.0.1:0"),
        shutdown_grace=1.0,
        namespaces=(
            NamespaceConfig("kv", PluginConfig("memstore", **plugin)),
            NamespaceConfig(
                "durable",
                PluginConfig("sqlite", **plugin),
                config={"path": str(data / "durable.sqlite3")},
            ),
        ),
    )


@asynccontextmanager
async def running(config: ProxyConfig) -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config).run)
        yield proxy
        nursery.cancel_scope.cancel()


def admin_target(proxy: Proxy) -> str:
    assert proxy.admin_address is not None
    host, port = proxy.admin_address
    return f"{host}:{port}"


def front_target(proxy: Proxy) -> str:
    assert proxy.address is not None
    host, port = proxy.address
    return f"{host}:{port}"


async def list_namespaces(channel: pg.Channel) -> dict[str, NamespaceStatus]:
    reply = await channel.unary_unary(
        ADMIN + "ListNamespaces", ListNamespacesRequest(), ListNamespacesResponse
    )
    return {ns.name: ns for ns in reply.namespaces}


async def reload(channel: pg.Channel, namespace: str) -> ReloadNamespaceResponse:
    reply: ReloadNamespaceResponse = await channel.unary_unary(
        ADMIN + "ReloadNamespace",
        ReloadNamespaceRequest(namespace=namespace),
        ReloadNamespaceResponse,
    )
    return reply


async def execute(channel: pg.Channel, namespace: str, operation: str, params: Any) -> Any:
    reply = await channel.unary_unary(
        "/prism.proxy.v1.DataProxy/Execute",
        ExecuteRequest(namespace=namespace, operation=operation, typed_params=pack(params)),
        ExecuteResponse,
    )
    return unpack(reply.typed_result, GetResponse) if operation == "get" else None


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="prism-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_admin_list_namespaces_reports_plugin_instance_and_health(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, health_interval=0.05)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
    ):
        namespaces = await list_namespaces(admin)
        assert list(namespaces) == ["kv", "durable"]  # configuration order
        kv = namespaces["kv"]
        assert (kv.plugin, kv.mode, kv.available, kv.in_flight) == (
            "memstore",
            "in_process",
            True,
            0,
        )
        assert kv.generation > 0
        assert kv.generation != namespaces["durable"].generation
        # The poller runs every health_interval: whatever it collected, no call was made.
        assert kv.metrics is None or kv.metrics.requests_total == 0

        with trio.fail_after(5):  # the periodic health check fills in last_health
            while True:
                health = (await list_namespaces(admin))["durable"].last_health
                if health is not None:
                    break
                await trio.sleep(0.05)
        assert health.status == HealthCheckResponseStatus.HEALTHY

        got = await admin.unary_unary(
            ADMIN + "GetNamespace", GetNamespaceRequest(name="durable"), NamespaceStatus
        )
        assert (got.name, got.plugin, got.generation) == (
            "durable",
            "sqlite",
            namespaces["durable"].generation,
        )


async def test_admin_reload_increments_generation_while_calls_keep_succeeding(
    tmp_path: Path,
) -> None:
    async with (
        running(make_config(tmp_path)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
        pg.open_channel(front_target(proxy)) as front,
    ):
        before = (await list_namespaces(admin))["durable"].generation
        done = trio.Event()
        calls = 0

        async def traffic() -> None:
            # Every call must succeed and see the previous write, whichever instance serves it.
            nonlocal calls
            while not done.is_set():
                value = b"%d" % calls
                await execute(front, "durable", "set", SetRequest(key="k", value=value))
                got = await execute(front, "durable", "get", GetRequest(key="k"))
                assert got.value == value
                calls += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            generations = [before]
            for _ in range(3):
                reply = await reload(admin, "durable")
                assert reply.generation > generations[-1]
                assert reply.duration_seconds > 0
                assert reply.namespace.generation == reply.generation
                assert reply.namespace.available
                generations.append(reply.generation)
                await trio.sleep(0.02)
            done.set()
        assert calls > 0
        assert (await list_namespaces(admin))["durable"].generation == generations[-1]


async def test_admin_unknown_namespace_is_not_found(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
    ):
        with pytest.raises(pg.NotFound, match="'nope'"):
            await reload(admin, "nope")
        with pytest.raises(pg.NotFound, match="'nope'"):
            await admin.unary_unary(
                ADMIN + "GetNamespace", GetNamespaceRequest(name="nope"), NamespaceStatus
            )


async def test_admin_reload_failure_is_failed_precondition_and_old_instance_keeps_serving(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    async with (
        running(make_config(data)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
        pg.open_channel(front_target(proxy)) as front,
    ):
        await execute(front, "durable", "set", SetRequest(key="k", value=b"v"))
        before = (await list_namespaces(admin))["durable"]
        # A new sqlite instance cannot open its database any more (it would create a missing
        # directory, but not one where a file is).
        shutil.rmtree(data)
        data.write_text("")

        with pytest.raises(pg.FailedPrecondition, match="previous instance keeps serving") as info:
            await reload(admin, "durable")
        assert "durable" in info.value.message
        assert "is not a directory" in info.value.message  # the reason reaches the operator

        after = (await list_namespaces(admin))["durable"]
        assert (after.generation, after.available) == (before.generation, True)
        got = await execute(front, "durable", "get", GetRequest(key="k"))
        assert got.value == b"v"  # the old instance, with its open database, still serves


async def test_host_reload_with_bad_config_leaves_old_instance_serving(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
        pg.open_channel(front_target(proxy)) as front,
    ):
        await execute(front, "kv", "set", SetRequest(key="k", value=b"v"))
        before = (await list_namespaces(admin))["kv"]
        with pytest.raises(PluginStartFailed, match="no_such_plugin"):
            await proxy.host.reload("kv", NamespaceConfig("kv", PluginConfig("no_such_plugin")))

        after = (await list_namespaces(admin))["kv"]
        assert (after.generation, after.plugin, after.available) == (
            before.generation,
            "memstore",
            True,
        )
        assert (await execute(front, "kv", "get", GetRequest(key="k"))).value == b"v"


async def test_admin_concurrent_reloads_of_one_namespace_both_complete_in_turn(
    tmp_path: Path,
) -> None:
    async with (
        running(make_config(tmp_path)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
    ):
        before = (await list_namespaces(admin))["kv"].generation
        replies: list[ReloadNamespaceResponse] = []

        async def one() -> None:
            replies.append(await reload(admin, "kv"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
        first, second = replies
        assert before < first.generation < second.generation
        # In turn: the second reload replaced the instance the first one started.
        assert (await list_namespaces(admin))["kv"].generation == second.generation


async def test_admin_unix_socket_is_0600_and_alone_when_only_it_is_configured(
    tmp_path: Path, short_dir: Path
) -> None:
    socket = short_dir / "admin.sock"
    config = make_config(tmp_path, admin=AdminConfig(listen=None, unix_socket=socket))
    async with running(config) as proxy:
        assert proxy.admin_address is None
        assert stat.S_IMODE(os.stat(socket).st_mode) == 0o600
        async with pg.open_channel(f"unix:{socket}") as admin:
            assert set(await list_namespaces(admin)) == {"kv", "durable"}
    assert not socket.exists()  # removed when the proxy stops


async def test_admin_is_not_served_by_the_front_door(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path)) as proxy,
        pg.open_channel(front_target(proxy)) as front,
    ):
        with pytest.raises(pg.Unimplemented):
            await list_namespaces(front)


async def test_admin_disabled_opens_no_listener(tmp_path: Path) -> None:
    config = make_config(tmp_path, admin=AdminConfig(enabled=False, listen=None))
    async with running(config) as proxy:
        assert (proxy.admin_server, proxy.admin_address, proxy.admin_socket) == (None, None, None)


async def test_admin_listener_serves_health_and_reflection(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path)) as proxy,
        pg.open_channel(admin_target(proxy)) as admin,
    ):
        health = await admin.unary_unary(
            "/grpc.health.v1.Health/Check",
            HealthCheckRequest(service="prism.namespace/kv"),
            HealthCheckResponse,
        )
        assert health.status == ServingStatus.SERVING
        method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        async with admin.stream(method, reflection.ServerReflectionResponse) as call:
            await call.send_message(reflection.ServerReflectionRequest(list_services="*"))
            await call.end()
            replies = [reply async for reply in call]
        listed = replies[0].list_services_response
        assert listed is not None
        assert "prism.admin.v1.Admin" in {s.name for s in listed.service}


async def test_admin_reports_metrics_from_its_lookup(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as proxy:
        latest = {"kv": PluginMetrics(requests_total=7, cache_hits=3)}
        service = AdminService(proxy.host, metrics=latest.get)
        assert service.status(proxy.host.route("kv")).metrics == latest["kv"]
        assert service.status(proxy.host.route("durable")).metrics is None


async def test_admin_listen_address_in_use_fails_with_listen_failed(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as first:
        taken = admin_target(first)
        second = make_config(tmp_path / "2", admin=AdminConfig(listen=taken))
        (tmp_path / "2").mkdir()
        with pytest.RaisesGroup(
            pytest.RaisesExc(ListenFailed, match="admin.listen"), flatten_subgroups=True
        ):
            async with running(second):
                pass


def test_admin_proxy_refuses_non_loopback_admin_address_built_in_code(tmp_path: Path) -> None:
    # A config built in code is validated as it is built, like one read from a file.
    with pytest.raises(ConfigError, match="not a loopback address"):
        Proxy(make_config(tmp_path, admin=AdminConfig(listen="0.0.0.0:50052")))
