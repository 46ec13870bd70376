"""``prism serve --config etcd://...`` and ``prism config push`` as an operator runs them: real
processes, a real etcd, real calls through the front door."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from etcd_server import EtcdServer, free_port
from fleet_testkit import document, new_target, ns, prism, serves, serving, url

from prism.etcd import EtcdClient


async def test_serve_from_etcd_push_changes_and_start_from_cache(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    first = tmp_path / "first.json"
    first.write_bytes(document(ns("kv")))
    pushed = await prism("config", "push", str(first), "--etcd", url(target))
    assert pushed.returncode == 0, pushed.stderr
    assert f"written to etcd key {target.config_key}" in pushed.stdout.decode()

    port = free_port()
    address = f"127.0.0.1:{port}"
    with trio.fail_after(180):
        async with serving(tmp_path, target, port):
            await serves(address, "kv")
            second = tmp_path / "second.json"
            second.write_bytes(document(ns("kv"), ns("more")))
            pushed = await prism("config", "push", str(second), "--etcd", url(target))
            assert pushed.returncode == 0, pushed.stderr
            await serves(address, "more")
            # An operator who based an edit on an old revision is refused; nothing is lost.
            stale = await prism(
                "config", "push", str(first), "--etcd", url(target), "--expect-revision", "1"
            )
            assert stale.returncode == 1
            assert "another push came first; nothing was written" in stale.stderr.decode()
            await serves(address, "more")
            listed = await prism("fleet", "status", "--etcd", url(target))
            assert listed.returncode == 0, listed.stderr
            assert f"127.0.0.1:{port}" in listed.stdout.decode()
        # Killed (SIGKILL: no clean stop), its record vanishes with its lease.
        while True:
            listed = await prism("fleet", "status", "--etcd", url(target), "--json")
            if json.loads(listed.stdout)["members"] == []:
                break
            await trio.sleep(0.5)

        # etcd down: a proxy starts from its cache and serves.
        await trio.to_thread.run_sync(etcd.kill)
        try:
            async with serving(tmp_path, target, port) as log:
                assert "starting from the cached config" in log.read_text()
                await serves(address, "more")
                await trio.to_thread.run_sync(etcd.start)
                # ... and picks up the fleet's changes once etcd is back.
                third = tmp_path / "third.json"
                third.write_bytes(document(ns("kv"), ns("more"), ns("third")))
                pushed = await prism("config", "push", str(third), "--etcd", url(target))
                assert pushed.returncode == 0, pushed.stderr
                await serves(address, "third")
        finally:
            if etcd.process is None:
                await trio.to_thread.run_sync(etcd.start)
    async with EtcdClient(etcd.endpoint) as client:
        assert (await client.range(target.config_key)).kvs[0].value == third.read_bytes()


async def test_push_invalid_file_exits_1_with_its_errors(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listen: 127.0.0.1:1\nnamespaces: [{name: kv, plugin: {name: memstore}}]\ntypo: 1\n"
    )
    with trio.fail_after(60):
        pushed = await prism("config", "push", str(bad), "--etcd", url(target))
    assert pushed.returncode == 1
    assert "prism: typo" in pushed.stderr.decode()
    async with EtcdClient(etcd.endpoint) as client:
        assert (await client.range(target.config_key)).kvs == ()


async def test_serve_etcd_down_without_cache_exits_2(tmp_path: Path) -> None:
    target = new_target(f"http://127.0.0.1:{free_port()}")
    with trio.fail_after(60):
        result = await prism(
            "serve", "--config", url(target), "--config-cache", str(tmp_path / "none.json")
        )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"etcd range {target.config_key} at {target.endpoint}" in err
    assert "no config cache at" in err
