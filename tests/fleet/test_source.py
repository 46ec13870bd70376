"""Config from etcd (prism.fleet.source): a real proxy, a real etcd, real calls."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
import trio
import trio.lowlevel
from etcd_server import EtcdServer
from fleet_testkit import (
    document,
    get,
    new_target,
    ns,
    running,
    running_from,
    set_,
    unreachable,
    wait_for,
)

from prism import grpc as pg
from prism.config import ConfigError
from prism.etcd import EtcdClient
from prism.fleet.cache import read_cache
from prism.fleet.source import read_initial
from prism.proxy.configreload import ConfigRejected, revision_of


async def put(etcd: EtcdServer, key: str, value: bytes) -> int:
    async with EtcdClient(etcd.endpoint) as client:
        return await client.put(key, value)


async def test_read_initial_validates_and_caches_0600(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    text = document(ns("kv"))
    revision = await put(etcd, target.config_key, text)
    cache = tmp_path / "cache" / "etcd.json"
    initial = await read_initial(target, cache)
    assert [n.name for n in initial.config.namespaces] == ["kv"]
    assert (initial.mod_revision, initial.from_cache) == (revision, False)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert read_cache(cache, target.config_key).data == text


async def test_read_initial_rejects_an_invalid_document(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    await put(etcd, target.config_key, document(ns("kv"), listen_typo=1))
    with pytest.raises(ConfigError) as caught:
        await read_initial(target, tmp_path / "cache.json")
    assert any("listen_typo" in line for line in caught.value.errors)
    assert not (tmp_path / "cache.json").exists()


async def test_read_initial_missing_key_says_how_to_push(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    with pytest.raises(ConfigError, match="prism config push FILE --etcd"):
        await read_initial(target, tmp_path / "cache.json")


async def test_read_initial_starts_from_the_cache_when_etcd_is_down(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    await put(etcd, target.config_key, document(ns("cached")))
    cache = tmp_path / "cache.json"
    first = await read_initial(target, cache)
    down = unreachable(target)
    initial = await read_initial(down, cache)
    assert initial.from_cache
    assert [n.name for n in initial.config.namespaces] == ["cached"]
    assert (initial.mod_revision, initial.watch_from) == (
        first.mod_revision,
        first.mod_revision + 1,
    )
    # Without a cache there is nothing to start from: one clear error.
    with pytest.raises(ConfigError, match="no config cache at"):
        await read_initial(down, tmp_path / "none.json")


async def test_source_applies_a_change_while_clients_call_with_zero_failures(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    await put(etcd, target.config_key, document(ns("kv")))
    async with running(target, tmp_path / "cache.json") as (proxy, source, front):
        await set_(front, "kv", "k", b"v")
        calls, failures = 0, []
        done = trio.Event()

        async def client() -> None:
            nonlocal calls
            while not done.is_set():
                try:
                    assert await get(front, "kv", "k") in (b"v", b"")
                except pg.GrpcError as exc:
                    failures.append(exc)
                calls += 1
                await trio.lowlevel.checkpoint()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                # kv changes (hot reload: a new instance, empty), "more" is added.
                revision = await put(
                    etcd, target.config_key, document(ns("kv", health_interval=0.5), ns("more"))
                )
                await wait_for(source, revision)
                done.set()
        assert failures == []
        assert calls > 0
        assert source.applied_revision == revision
        assert source.last_error is None
        await set_(front, "more", "x", b"1")
        assert await get(front, "more", "x") == b"1"
        assert proxy.reloader.revision == revision_of(
            document(ns("kv", health_interval=0.5), ns("more"))
        )
        assert read_cache(tmp_path / "cache.json", target.config_key).mod_revision == revision


async def test_source_rejects_a_bad_change_and_keeps_serving(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    good = await put(etcd, target.config_key, document(ns("kv")))
    async with running(target, tmp_path / "cache.json") as (proxy, source, front):
        await set_(front, "kv", "k", b"kept")
        with trio.fail_after(60):
            bad = await put(etcd, target.config_key, b"namespaces: [ {name: kv, plugin: 7} ]")
            await wait_for(source, bad)
        assert source.applied_revision == good
        assert source.last_error is not None
        assert source.last_error.startswith(f"revision {bad} rejected: ")
        assert await get(front, "kv", "k") == b"kept"
        # The cache keeps the good one.
        assert read_cache(tmp_path / "cache.json", target.config_key).mod_revision == good
        # A good change after the bad one applies.
        with trio.fail_after(60):
            fixed = await put(etcd, target.config_key, document(ns("kv"), ns("two")))
            await wait_for(source, fixed)
        assert source.last_error is None
        assert [n.name for n in proxy.config.namespaces] == ["kv", "two"]


async def test_source_survives_etcd_restarts_and_ends_on_the_latest_revision(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    await put(etcd, target.config_key, document(ns("kv")))
    async with running(target, tmp_path / "cache.json") as (proxy, source, front):
        await set_(front, "kv", "k", b"v")
        latest = 0
        with trio.fail_after(120):
            for round in range(3):
                await trio.to_thread.run_sync(etcd.kill)
                # etcd is down: the proxy keeps serving its running config.
                assert await get(front, "kv", "k") == b"v"
                while source.etcd_error is None:
                    await source.changed()
                await trio.to_thread.run_sync(etcd.start)
                names = [ns("kv"), *(ns(f"n{i}") for i in range(round + 1))]
                for _ in range(3):  # several changes while the watch reconnects
                    latest = await put(etcd, target.config_key, document(*names))
                await wait_for(source, latest)
        assert source.applied_revision == latest
        assert source.etcd_error is None
        assert [n.name for n in proxy.config.namespaces] == ["kv", "n0", "n1", "n2"]
        assert await get(front, "kv", "k") == b"v"


async def test_source_rereads_after_compaction(etcd: EtcdServer, tmp_path: Path) -> None:
    """A proxy that starts from its cache while etcd has moved on and compacted its history
    cannot resume the watch: it reads the key again and applies what is there."""
    target = new_target(etcd.endpoint)
    cache = tmp_path / "cache.json"
    await put(etcd, target.config_key, document(ns("old")))
    await read_initial(target, cache)  # the cache now holds "old"
    await put(etcd, target.config_key, document(ns("middle")))
    latest = await put(etcd, target.config_key, document(ns("new")))
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{etcd.endpoint}/v3/kv/compaction", json={"revision": str(latest)}
        )
        assert answer.status_code == 200
    down = unreachable(target)
    initial = await read_initial(down, cache)
    assert initial.from_cache
    async with running_from(target, cache, initial) as (proxy, source, _):
        with trio.fail_after(60):
            await wait_for(source, latest)
        assert [n.name for n in proxy.config.namespaces] == ["new"]


async def test_source_reload_rereads_the_key(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    revision = await put(etcd, target.config_key, document(ns("kv")))
    async with running(target, tmp_path / "cache.json") as (proxy, source, _):
        result = await proxy.reload_config()  # as SIGHUP and `prism config reload` do
        assert result.unchanged == ["kv"]
        assert proxy.reloader.path_text == f"etcd://127.0.0.1:{etcd.client_port}{target.config_key}"
        await put(etcd, target.config_key, b"listen: [")
        with pytest.raises(ConfigRejected, match="not valid YAML"):
            await proxy.reload_config()
        assert source.applied_revision >= revision
