"""Membership (prism.fleet.members): each proxy's record under a lease, in a real etcd."""

from __future__ import annotations

from pathlib import Path

import trio
from etcd_server import EtcdServer
from fleet_testkit import document, new_target, ns, running, wait_for

import prism
from prism.etcd import EtcdClient, EtcdTarget
from prism.fleet.members import Member, Membership, list_members


async def members(etcd: EtcdServer, target: EtcdTarget) -> list[Member]:
    async with EtcdClient(etcd.endpoint) as client:
        listed = await list_members(client, target)
    assert all(isinstance(m, Member) for m in listed)
    return [m for m in listed if isinstance(m, Member)]


async def until(etcd: EtcdServer, target: EtcdTarget, check: object) -> list[Member]:
    """The records once ``check(records)`` holds (the caller bounds the wait)."""
    assert callable(check)
    while True:
        found = await members(etcd, target)
        if check(found):
            return found
        await trio.sleep(0.05)


async def test_membership_record_follows_the_config_and_goes_on_stop(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    async with EtcdClient(etcd.endpoint) as client:
        first = await client.put(target.config_key, document(ns("kv")))
    with trio.fail_after(60):
        async with running(target, tmp_path / "cache.json") as (proxy, source, _):
            assert proxy.address is not None
            address = "{}:{}".format(*proxy.address)
            (record,) = await until(etcd, target, lambda found: len(found) == 1)
            assert (record.address, record.version, record.config_revision) == (
                address,
                prism.__version__,
                first,
            )
            assert record.last_error is None
            assert record.id.endswith(f":{proxy.address[1]}")
            async with EtcdClient(etcd.endpoint) as client:
                bad = await client.put(target.config_key, b"namespaces: 7")
            await wait_for(source, bad)
            (record,) = await until(etcd, target, lambda found: found[0].last_error is not None)
            assert record.last_error is not None
            assert record.last_error.startswith(f"revision {bad} rejected: ")
            assert record.config_revision == first
        # A clean stop revokes the lease: the record is gone at once.
        assert await members(etcd, target) == []


async def test_membership_publishes_a_change_whose_wakeup_came_mid_write(
    etcd: EtcdServer,
) -> None:
    """The state changes right after a write read it, and its wakeup fires while no one waits
    (a change applied while the record was being written, or while etcd was down): the record
    still ends up saying so."""
    target = new_target(etcd.endpoint)
    current: list[tuple[int, str | None]] = [(1, None)]

    def state() -> tuple[int, str | None]:
        now = current[0]
        current[0] = (2, None)
        return now

    never = trio.Event()
    membership = Membership(target, "m-1", "127.0.0.1:1", state, never.wait)
    async with trio.open_nursery() as nursery:
        await nursery.start(membership.run)
        with trio.fail_after(30):
            await until(etcd, target, lambda found: found and found[0].config_revision == 2)
        nursery.cancel_scope.cancel()
