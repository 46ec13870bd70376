"""Config reload through the admin API, on a real proxy reading a real file: added namespaces
start, removed ones stop, changed ones reload, unchanged ones are untouched; a bad file is
rejected while the old configuration serves; secrets (the admin token too) are read again."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from host_testkit import execute, result

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    GetStatusRequest,
    ProxyStatus,
    ReloadConfigRequest,
    ReloadConfigResponse,
)
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism.config import load_config
from prism.proxy.app import Proxy

ADMIN = "/prism.admin.v1.Admin/"
TOKEN = "first-admin-token"


def ns(name: str, **plugin: Any) -> dict[str, Any]:
    return {
        "name": name,
        "plugin": {"name": "memstore", **plugin},
        "access": {"anonymous": True},
    }


def document(*namespaces: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "token": "{{ secret:admin-token }}"},
        "secrets": {"directory": "secrets", "env_prefix": None},
        "shutdown_grace": 1.0,
        "namespaces": list(namespaces),
        **top,
    }


def write(path: Path, doc: dict[str, Any] | str) -> str:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[tuple[Proxy, pg.Channel, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(load_config(path), config_path=path).run)
        assert proxy.address is not None
        assert proxy.admin_address is not None
        admin = "{}:{}".format(*proxy.admin_address)
        async with (
            pg.open_channel("{}:{}".format(*proxy.address)) as front,
            httpx.AsyncClient(base_url=f"http://{admin}", timeout=30) as http,
        ):
            with trio.fail_after(60):
                yield proxy, front, http
        nursery.cancel_scope.cancel()


async def admin(proxy: Proxy, method: str, request: Any, reply: type, token: str = TOKEN) -> Any:
    assert proxy.admin_address is not None
    async with pg.open_channel("{}:{}".format(*proxy.admin_address)) as channel:
        return await channel.unary_unary(
            ADMIN + method, request, reply, metadata=[("authorization", f"Bearer {token}")]
        )


def generation(proxy: Proxy, name: str) -> int:
    instance = proxy.host.route(name).current
    assert instance is not None
    return instance.generation


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin-token").write_text(TOKEN)
    return tmp_path / "prism.yaml"


async def get(front: pg.Channel, namespace: str, key: str) -> GetResponse:
    return result(await execute(front, namespace, "get", GetRequest(key=key)), GetResponse)


async def test_admin_config_reload_applies_added_removed_changed_and_leaves_unchanged(
    config_file: Path,
) -> None:
    first = write(config_file, document(ns("keep"), ns("change"), ns("drop")))
    async with running(config_file) as (proxy, front, _):
        status = await admin(proxy, "GetStatus", GetStatusRequest(), ProxyStatus)
        assert (status.config_revision, status.config_path) == (first, str(config_file))
        loaded = status.config_loaded_at
        for name in ("keep", "change", "drop"):
            await execute(front, name, "set", SetRequest(key="k", value=name.encode()))
        keep, change, address = (
            generation(proxy, "keep"),
            generation(proxy, "change"),
            proxy.address,
        )

        second = write(
            config_file,
            document(
                ns("keep"),
                ns("change", health_interval=0.5),
                ns("added"),
                listen="127.0.0.1:1",  # cannot change live
            ),
        )
        reply = await admin(proxy, "ReloadConfig", ReloadConfigRequest(), ReloadConfigResponse)
        assert reply.revision == second
        assert (reply.added, reply.removed, reply.reloaded, reply.unchanged, reply.failed) == (
            ["added"],
            ["drop"],
            ["change"],
            ["keep"],
            [],
        )
        assert reply.restart_required == ["restart required for listen"]

        assert generation(proxy, "keep") == keep  # untouched: same instance, same data
        assert (await get(front, "keep", "k")).value == b"keep"
        assert generation(proxy, "change") > change  # a new instance (memstore starts empty)
        assert not (await get(front, "change", "k")).found
        assert proxy.host.route("change").config.plugin.health_interval == 0.5
        await execute(front, "added", "set", SetRequest(key="k", value=b"new"))
        with pytest.raises(pg.NotFound, match="'drop'"):
            await get(front, "drop", "k")
        assert proxy.address == address  # the old listen value stays in force
        assert list(proxy.host.routes) == ["keep", "change", "added"]
        assert set(proxy.pipeline.namespaces) == {"keep", "change", "added"}
        assert [n.name for n in proxy.config.namespaces] == ["keep", "change", "added"]
        assert proxy.config.listen == "127.0.0.1:0"

        status = await admin(proxy, "GetStatus", GetStatusRequest(), ProxyStatus)
        assert status.config_revision == second
        assert status.config_loaded_at >= loaded
        assert status.restart_required == ["restart required for listen"]


async def test_admin_config_reload_rejects_a_bad_file_and_the_old_config_keeps_serving(
    config_file: Path,
) -> None:
    first = write(config_file, document(ns("kv")))
    async with running(config_file) as (proxy, front, http):
        await execute(front, "kv", "set", SetRequest(key="k", value=b"v"))
        before = generation(proxy, "kv")
        bad = document(ns("kv", mode="teleport"), ns("other"))
        bad["namespaces"][1]["colour"] = "blue"
        write(config_file, bad)
        with pytest.raises(pg.FailedPrecondition) as raised:
            await admin(proxy, "ReloadConfig", ReloadConfigRequest(), ReloadConfigResponse)
        assert raised.value.message.startswith(
            "config rejected; the running configuration keeps serving: "
        )
        assert "namespaces[0].plugin.mode" in raised.value.message
        assert "namespaces[1].colour" in raised.value.message

        reply = await http.post(
            "/admin/config/reload", json={}, headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert reply.status_code == 409
        errors = reply.json()["errors"]
        assert any(e.startswith("namespaces[0].plugin.mode:") for e in errors), errors
        assert any(e.startswith("namespaces[1].colour:") for e in errors), errors

        write(config_file, "namespaces: [unclosed\n")
        with pytest.raises(pg.FailedPrecondition, match="is not valid YAML"):
            await admin(proxy, "ReloadConfig", ReloadConfigRequest(), ReloadConfigResponse)

        assert generation(proxy, "kv") == before
        assert (await get(front, "kv", "k")).value == b"v"
        status = await admin(proxy, "GetStatus", GetStatusRequest(), ProxyStatus)
        assert status.config_revision == first


async def test_admin_config_reload_rereads_secrets_admin_token_and_namespace_credentials(
    config_file: Path,
) -> None:
    secrets = config_file.parent / "secrets"
    (secrets / "pw").write_text("password-one")
    with_secret = ns("creds")
    with_secret["credentials"] = {"password": "{{ secret:pw }}"}
    write(config_file, document(with_secret, ns("plain")))
    async with running(config_file) as (proxy, _, http):
        creds, plain = generation(proxy, "creds"), generation(proxy, "plain")
        # Rotation: write the secrets, reload. The file itself is unchanged.
        (secrets / "pw").write_text("password-two")
        (secrets / "admin-token").write_text("second-admin-token")
        reply = await admin(proxy, "ReloadConfig", ReloadConfigRequest(), ReloadConfigResponse)
        assert (reply.reloaded, reply.unchanged, reply.restart_required) == (
            ["creds"],
            ["plain"],
            [],
        )
        assert generation(proxy, "creds") > creds
        assert generation(proxy, "plain") == plain
        with pytest.raises(pg.Unauthenticated):
            await admin(proxy, "GetStatus", GetStatusRequest(), ProxyStatus)
        status = await admin(
            proxy, "GetStatus", GetStatusRequest(), ProxyStatus, token="second-admin-token"
        )
        assert status.config_path == str(config_file)
        # A secret that went missing rejects the reload, naming it, never a value.
        (secrets / "pw").unlink()
        reply = await http.post(
            "/admin/config/reload", headers={"authorization": "Bearer second-admin-token"}
        )
        assert reply.status_code == 409
        assert reply.json()["errors"] == [
            f"namespaces[0].credentials.password: secret 'pw' not found (no file {secrets / 'pw'})"
        ]
        assert "password-" not in reply.text
