"""prism.fleet.push: validate, then write with a compare on the revision read."""

from __future__ import annotations

from pathlib import Path

import pytest
from etcd_server import EtcdServer
from fleet_testkit import document, new_target, ns

from prism.config import ConfigError
from prism.etcd import EtcdClient
from prism.fleet.push import PushConflict, current_revision, push


async def test_push_two_operators_second_fails_no_lost_update(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    mine.write_bytes(document(ns("mine")))
    theirs.write_bytes(document(ns("theirs")))
    async with EtcdClient(etcd.endpoint) as client:
        await client.put(target.config_key, document(ns("base")))
        # Both operators read the same revision, then both push.
        base, _ = await current_revision(client, target)
        first = await push(client, target, mine, expect_revision=base)
        assert (first.previous, first.unchanged) == (base, False)
        with pytest.raises(PushConflict, match=f"changed since revision {base} "):
            await push(client, target, theirs, expect_revision=base)
        revision, value = await current_revision(client, target)
    assert (revision, value) == (first.revision, document(ns("mine")))


async def test_push_validates_before_writing(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespaces: [{name: kv, plugin: {name: memstore}, bogus: 1}]\n")
    async with EtcdClient(etcd.endpoint) as client:
        with pytest.raises(ConfigError) as caught:
            await push(client, target, bad)
        assert any("bogus" in line for line in caught.value.errors)
        assert await current_revision(client, target) == (0, None)


async def test_push_new_key_then_unchanged(etcd: EtcdServer, tmp_path: Path) -> None:
    target = new_target(etcd.endpoint)
    file = tmp_path / "prism.json"
    file.write_bytes(document(ns("kv")))
    async with EtcdClient(etcd.endpoint) as client:
        created = await push(client, target, file)
        again = await push(client, target, file)
    assert (created.previous, created.unchanged) == (0, False)
    assert (again.revision, again.unchanged) == (created.revision, True)
