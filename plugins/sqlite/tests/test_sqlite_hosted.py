"""sqlite hosted by the proxy, as an operator configures it: a relative ``path`` is relative to
the config file (in-process and in a sidecar, which learns the directory in Initialize), the
plugin creates its directory, and a missing ``path`` is named as a path in the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import load_config
from prism.hosting.host import PluginStartFailed
from prism.proxy.app import Proxy
from prism.sdk import pack, unpack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"


def write_config(directory: Path, mode: str, config: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prism.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "admin: {enabled: false}\n"
        "shutdown_grace: 2\n"
        "namespaces:\n"
        "  - name: kv\n"
        "    plugin: {name: memstore}\n"
        "  - name: durable\n"
        f"    plugin: {{name: sqlite, mode: {mode}, drain_grace: 2}}\n"
        f"{config}"
    )
    return path


async def call(channel: pg.Channel, operation: str, params: object) -> ExecuteResponse:
    request = ExecuteRequest(namespace="durable", operation=operation, typed_params=pack(params))
    response: ExecuteResponse = await channel.unary_unary(EXECUTE, request, ExecuteResponse)
    return response


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_sqlite_hosted_relative_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    etc = tmp_path / "etc" / "prism"
    path = write_config(etc, mode, "    config: {path: data/durable.sqlite3}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the proxy's (and so the sidecar's) working directory
    config = load_config(os.path.relpath(path))  # noqa: ASYNC240 - before anything runs
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proxy: Proxy = await nursery.start(Proxy(config).run)
            assert proxy.address is not None
            async with pg.open_channel(f"127.0.0.1:{proxy.address[1]}") as channel:
                await call(channel, "set", SetRequest(key="k", value=b"v"))
                got = await call(channel, "get", GetRequest(key="k"))
                assert unpack(got.typed_result, GetResponse).value == b"v"
            nursery.cancel_scope.cancel()
    assert (etc / "data" / "durable.sqlite3").is_file()
    assert stat.S_IMODE((etc / "data").stat().st_mode) == 0o700
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("", "namespaces[1].config.path: required (the database file)"),
        ("    config: {pth: x.db}\n", "namespaces[1].config.pth: unknown field in "),
        (
            "    config: {path: x.db, busy_timeout_ms: -1}\n",
            "namespaces[1].config.busy_timeout_ms: ",
        ),
    ],
)
async def test_sqlite_hosted_config_errors_name_the_field_in_the_file(
    tmp_path: Path, mode: str, config: str, error: str
) -> None:
    path = write_config(tmp_path, mode, config)
    with trio.fail_after(60), pytest.raises(BaseExceptionGroup) as info:  # noqa: PT012
        async with trio.open_nursery() as nursery:
            await nursery.start(Proxy(load_config(path)).run)
            nursery.cancel_scope.cancel()  # not reached: the start fails
    failed = info.value.subgroup(PluginStartFailed)
    assert failed is not None
    (leaf,) = failed.exceptions
    while isinstance(leaf, BaseExceptionGroup):
        (leaf,) = leaf.exceptions
    assert str(leaf).startswith(
        "namespace 'durable': plugin 'sqlite' refused to initialize: " + error
    ), str(leaf)
