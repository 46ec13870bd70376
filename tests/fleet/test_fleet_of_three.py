"""Three ``prism serve`` processes sharing one real etcd, with clients calling each of them all
along: config changes reach the whole fleet with no failed request, a bad change is refused by
every proxy (and said so in its membership record), and etcd restarts lose no change."""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from etcd_server import EtcdServer
from fleet_testkit import FleetProxy, document, fleet, get, new_target, ns, serves, set_

from prism import grpc as pg
from prism.etcd import EtcdClient, EtcdTarget
from prism.fleet.members import Member, list_members

log = logging.getLogger(__name__)


@dataclass
class Callers:
    """One client per proxy calling namespace ``kv`` in a loop; every failure is kept."""

    calls: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@asynccontextmanager
async def calling(proxies: list[FleetProxy]) -> AsyncIterator[Callers]:
    callers = Callers()

    async def call(proxy: FleetProxy) -> None:
        async with pg.open_channel(proxy.address) as front:
            while True:
                try:
                    await get(front, "kv", "k")
                except pg.GrpcError as exc:
                    callers.failures.append(f"{proxy.member}: {exc}")
                callers.calls[proxy.member] = callers.calls.get(proxy.member, 0) + 1
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        for proxy in proxies:
            nursery.start_soon(call, proxy)
        yield callers
        nursery.cancel_scope.cancel()


async def members(etcd: EtcdServer, target: EtcdTarget) -> dict[str, Member]:
    async with EtcdClient(etcd.endpoint) as client:
        listed = await list_members(client, target)
    return {m.id: m for m in listed if isinstance(m, Member)}


async def until_members(
    etcd: EtcdServer, target: EtcdTarget, check: Callable[[Member], bool], ids: list[str]
) -> dict[str, Member]:
    """The records once each of ``ids`` has one and ``check`` holds for all (caller bounds)."""
    while True:
        found = await members(etcd, target)
        if all(i in found and check(found[i]) for i in ids):
            return found
        await trio.sleep(0.05)


async def put(etcd: EtcdServer, target: EtcdTarget, value: bytes) -> int:
    async with EtcdClient(etcd.endpoint) as client:
        return await client.put(target.config_key, value)


async def until_serving(address: str, namespace: str) -> None:
    """Until a call to ``namespace`` at ``address`` succeeds (tight: this is what is timed)."""
    async with pg.open_channel(address) as front:
        while True:
            try:
                await set_(front, namespace, "k", b"1")
                return
            except pg.GrpcError:
                await trio.sleep(0.002)


def applied(proxy: FleetProxy, target: EtcdTarget) -> list[int]:
    """The etcd revisions ``proxy`` applied, in order, from its log."""
    pattern = re.compile(rf"etcd key {re.escape(target.config_key)} revision (\d+) applied")
    return [int(m) for m in pattern.findall(proxy.log.read_text())]


async def test_fleet_change_reaches_all_three_while_clients_call(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    await put(etcd, target, document(ns("kv")))
    with trio.fail_after(180):
        async with fleet(tmp_path, target) as proxies:
            ids = [p.member for p in proxies]
            for proxy in proxies:
                await serves(proxy.address, "kv")
            seconds: list[float] = []
            async with calling(proxies) as callers:
                latest = 0
                for i in range(5):
                    # kv's instance is replaced (a new health interval) and c{i} is added.
                    latest = await put(
                        etcd,
                        target,
                        document(
                            ns("kv", health_interval=1.0 + i), *(ns(f"c{j}") for j in range(i + 1))
                        ),
                    )
                    start = trio.current_time()
                    with trio.fail_after(30):  # the target is 1 s; this only catches a hang
                        async with trio.open_nursery() as nursery:
                            for proxy in proxies:
                                nursery.start_soon(until_serving, proxy.address, f"c{i}")
                    seconds.append(trio.current_time() - start)
                await trio.sleep(0.2)  # calls after the last change, too
            log.warning(
                "config change to serving on all three proxies: median %.3f s, max %.3f s "
                "over %d changes (target 1 s)",
                statistics.median(seconds),
                max(seconds),
                len(seconds),
            )
            assert callers.failures == []
            assert all(callers.calls.get(i, 0) > 0 for i in ids)
            found = await until_members(
                etcd, target, lambda m: m.config_revision == latest and m.last_error is None, ids
            )
            assert sorted(found) == ids
            for proxy in proxies:
                assert applied(proxy, target)[-1] == latest


async def test_fleet_bad_change_rejected_by_all_three_and_reported(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    good = await put(etcd, target, document(ns("kv")))
    with trio.fail_after(180):
        async with fleet(tmp_path, target) as proxies:
            ids = [p.member for p in proxies]
            for proxy in proxies:
                await serves(proxy.address, "kv")  # writes k = b"kv"
            async with calling(proxies) as callers:
                bad = await put(etcd, target, document(ns("kv"), listen_typo=1))
                found = await until_members(etcd, target, lambda m: m.last_error is not None, ids)
            assert callers.failures == []
            for member in found.values():
                assert member.config_revision == good
                assert member.last_error is not None
                assert member.last_error.startswith(f"revision {bad} rejected: ")
                assert "listen_typo" in member.last_error
            # The old config keeps serving: same instance, same data.
            for proxy in proxies:
                async with pg.open_channel(proxy.address) as front:
                    assert await get(front, "kv", "k") == b"kv"
                assert applied(proxy, target) == []


async def test_fleet_etcd_restarts_during_changes_nothing_missed_nothing_twice(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    """Each change is written and etcd is killed at once, before or after the proxies saw it;
    etcd comes back, and every proxy must apply that change (resuming its watch from the last
    revision it saw + 1), exactly once, while serving all along."""
    target = new_target(etcd.endpoint)
    await put(etcd, target, document(ns("kv")))
    written: list[int] = []
    try:
        with trio.fail_after(300):
            async with fleet(tmp_path, target) as proxies:
                ids = [p.member for p in proxies]
                for proxy in proxies:
                    await serves(proxy.address, "kv")
                async with calling(proxies) as callers:
                    for i in range(4):
                        names = [ns("kv"), *(ns(f"r{j}") for j in range(i + 1))]
                        written.append(await put(etcd, target, document(*names)))
                        if i % 2 == 0:  # every other change: etcd dies right after it
                            await trio.to_thread.run_sync(etcd.kill)
                            await trio.sleep(0.5)  # the fleet serves without etcd
                            await trio.to_thread.run_sync(etcd.start)
                        for proxy in proxies:
                            await serves(proxy.address, f"r{i}")
                    found = await until_members(
                        etcd, target, lambda m: m.config_revision == written[-1], ids
                    )
                assert callers.failures == []
                assert all(m.last_error is None for m in found.values())
                for proxy in proxies:
                    assert applied(proxy, target) == written, proxy.member
    finally:
        if etcd.process is None:
            await trio.to_thread.run_sync(etcd.start)
