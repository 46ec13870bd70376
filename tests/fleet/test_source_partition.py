"""A network partition between a proxy and etcd, with network namespaces (``ip netns``; the
suite runs as root): etcd runs in its own namespace behind a veth pair, and the partition takes
the link down. Packets are then dropped without a RST or an ICMP error, which loopback cannot
show: a killed etcd on loopback resets its connections at once. The proxy's watch only reads,
so only its TCP keepalive (prism.etcd.client) notices that etcd is gone; the proxy keeps
serving, and resumes the watch once the network is back."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from etcd_server import EtcdServer, etcd_server
from fleet_testkit import document, get, new_target, ns, running, set_, wait_for

from prism.etcd import EtcdClient


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Netns:
    """A network namespace joined to this one by a veth pair: ``host`` (here) and ``peer``
    (there) addresses."""

    name: str
    outer: str  # the veth end in this namespace
    inner: str  # the end in the namespace
    host: str
    peer: str

    def cut(self) -> None:
        """Partition: the namespace's end goes down; packets are dropped silently."""
        ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "down")

    def heal(self) -> None:
        ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "up")


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    tag = os.getpid() % 100000
    net = f"10.{200 + tag % 50}.{tag // 50 % 250}"
    space = Netns(f"prism-part-{tag}", f"ppo{tag}", f"ppi{tag}", f"{net}.1", f"{net}.2")
    ip("netns", "add", space.name)
    try:
        ip("link", "add", space.outer, "type", "veth", "peer", "name", space.inner)
        ip("link", "set", space.inner, "netns", space.name)
        ip("addr", "add", f"{space.host}/30", "dev", space.outer)
        ip("link", "set", space.outer, "up")
        ip("netns", "exec", space.name, "ip", "addr", "add", f"{space.peer}/30", "dev", space.inner)
        ip("netns", "exec", space.name, "ip", "link", "set", space.inner, "up")
        ip("netns", "exec", space.name, "ip", "link", "set", "lo", "up")
        yield space
    finally:
        # Deleting the namespace deletes its veth end, and with it the pair.
        subprocess.run(["ip", "netns", "delete", space.name], check=False)


@pytest.fixture(scope="module")
def etcd(netns: Netns) -> Iterator[EtcdServer]:
    with etcd_server(host=netns.peer, netns=netns.name) as server:
        yield server


async def test_source_detects_a_silent_partition_serves_and_resumes(
    etcd: EtcdServer, netns: Netns, tmp_path: Path
) -> None:
    target = new_target(etcd.endpoint)
    async with EtcdClient(etcd.endpoint) as client:
        await client.put(target.config_key, document(ns("kv")))
    async with running(target, tmp_path / "cache.json") as (_, source, front):
        await set_(front, "kv", "k", b"v")
        try:
            netns.cut()
            # Nothing comes back on the watch's connection, not even an error: only the
            # keepalive's unanswered probes end it (about 11 s of silence).
            with trio.fail_after(60):
                while source.etcd_error is None:
                    await source.changed()
            assert etcd.endpoint in source.etcd_error
            # Cut off from etcd, the proxy serves its running config.
            assert await get(front, "kv", "k") == b"v"
        finally:
            netns.heal()
        with trio.fail_after(60):
            async with EtcdClient(etcd.endpoint) as client:
                latest = await client.put(target.config_key, document(ns("kv"), ns("after")))
            await wait_for(source, latest)
        assert source.applied_revision == latest
        assert source.etcd_error is None
        await set_(front, "after", "x", b"1")
        assert await get(front, "kv", "k") == b"v"
