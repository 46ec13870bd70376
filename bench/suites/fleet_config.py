"""`fleet-config` suite: how long a config change written to etcd takes to serve on a fleet of
proxies.

One real etcd (Debian's `etcd-server`) and `--proxies` (default 3) `prism serve --config
etcd://...` processes on loopback, each with `--clients` (default 2) callers running memstore
gets against it all along, 5 ms apart (the load, and a check: a failed call is counted and
reported).
Then `--changes` (default 20) times: a config that adds namespace `cN` (and replaces `kv`'s
instance, so the reload has work to do) is written to etcd, and one poller per proxy calls
`cN` every 2 ms until it answers. A change's propagation time is from just before the PUT to
the first successful call on the last proxy to serve it; p50/p99 over the changes, and the
per-proxy times, are reported.

Same-run reference: a watcher in the bench process (prism's etcd client) times each PUT to
its watch event, the part of the propagation that is etcd's and the network's, not the
proxies' (decode, validate, hot reload, route switch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import report
from bench.procs import ROOT, free_port
from bench.suites import register
from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.etcd import EtcdClient
from prism.sdk.typed import pack

PACKAGES = ("trio", "httpx", "h2")
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PREFIX = "/bench/fleet"


def _document(i: int) -> bytes:
    def ns(name: str, **plugin: Any) -> dict[str, Any]:
        return {
            "name": name,
            "plugin": {"name": "memstore", **plugin},
            "access": {"anonymous": True},
        }

    namespaces = [ns("kv", health_interval=1.0 + i), *(ns(f"c{j}") for j in range(i))]
    doc = {"listen": "127.0.0.1:0", "admin": {"enabled": False}, "namespaces": namespaces}
    return json.dumps(doc).encode()


def _start_etcd(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = free_port(), free_port()
    endpoint, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = (directory / "etcd.log").open("wb")
    process = subprocess.Popen(
        [
            ETCD,
            "--name=bench",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={endpoint}",
            f"--advertise-client-urls={endpoint}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, endpoint


def _start_proxy(directory: Path, endpoint: str, i: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    home = directory / f"proxy-{i}"
    home.mkdir()
    log = (home / "prism.log").open("wb")
    url = endpoint.replace("http://", "etcd://") + PREFIX
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prism.cli.main",
            "serve",
            "--config",
            url,
            "--config-cache",
            str(home / "cache.json"),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            "off",
            "--log-format",
            "text",
            "--member-id",
            f"bench-{i}",
        ],
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return process, f"127.0.0.1:{port}"


def _request(namespace: str, op: str) -> ExecuteRequest:
    params = GetRequest(key="k") if op == "get" else SetRequest(key="k", value=b"1")
    return ExecuteRequest(namespace=namespace, operation=op, typed_params=pack(params))


async def _until_serving(address: str, namespace: str) -> float:
    """When (trio clock) a call to ``namespace`` first succeeds."""
    request = _request(namespace, "set")
    async with pg.open_channel(address) as channel:
        while True:
            try:
                await channel.unary_unary(EXECUTE, request, ExecuteResponse)
                return trio.current_time()
            except pg.GrpcError:
                await trio.sleep(0.002)


async def _poll(served: list[float], n: int, address: str, namespace: str) -> None:
    served[n] = await _until_serving(address, namespace)


class _Load:
    def __init__(self) -> None:
        self.calls = 0
        self.failures: list[str] = []

    async def caller(self, address: str) -> None:
        request = _request("kv", "get")
        async with pg.open_channel(address) as channel:
            while True:
                try:
                    await channel.unary_unary(EXECUTE, request, ExecuteResponse)
                except pg.GrpcError as exc:
                    self.failures.append(f"{address}: {exc}")
                self.calls += 1
                await trio.sleep(0.005)


async def _measure(
    endpoint: str, addresses: list[str], changes: int, clients: int
) -> dict[str, Any]:
    key = f"{PREFIX}/config"
    load = _Load()
    etcd_ms: list[float] = []
    fleet_ms: list[float] = []
    per_proxy_ms: list[list[float]] = []
    async with EtcdClient(endpoint) as client, trio.open_nursery() as nursery:
        with trio.fail_after(60):
            for address in addresses:
                await _until_serving(address, "kv")
        for address in addresses:
            for _ in range(clients):
                nursery.start_soon(load.caller, address)
        current = (await client.range(key)).revision
        async with client.watch(key, start_revision=current + 1) as batches:
            events = batches.__aiter__()
            for i in range(1, changes + 1):
                await trio.sleep(0.2)  # the fleet at rest, under its load
                start = trio.current_time()
                await client.put(key, _document(i))
                with trio.fail_after(60):
                    await events.__anext__()
                    etcd_ms.append((trio.current_time() - start) * 1000)
                    served = [0.0] * len(addresses)
                    async with trio.open_nursery() as polls:
                        for n, address in enumerate(addresses):
                            polls.start_soon(_poll, served, n, address, f"c{i - 1}")
                per_proxy_ms.append([(t - start) * 1000 for t in served])
                fleet_ms.append(max(per_proxy_ms[-1]))
        nursery.cancel_scope.cancel()
    return {
        "etcd_event_ms": etcd_ms,
        "fleet_ms": fleet_ms,
        "per_proxy_ms": per_proxy_ms,
        "load_calls": load.calls,
        "load_failures": load.failures,
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class FleetConfigSuite:
    name = "fleet-config"
    summary = "config propagation time from an etcd PUT to serving on every proxy of a fleet"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--proxies", type=int, default=3, help="proxies (default 3)")
        parser.add_argument(
            "--changes", type=int, help="config changes timed (default 20, --quick 5)"
        )
        parser.add_argument(
            "--clients", type=int, default=2, help="callers per proxy during the run (default 2)"
        )

    def run(self, args: argparse.Namespace) -> int:
        changes: int = args.changes or (5 if args.quick else 20)
        directory = Path(tempfile.mkdtemp(prefix="prism-bench-fleet-"))
        processes: list[subprocess.Popen[bytes]] = []
        try:
            etcd, endpoint = _start_etcd(directory)
            processes.append(etcd)
            trio.run(_put_when_up, endpoint, f"{PREFIX}/config", _document(0))
            addresses = []
            for i in range(1, args.proxies + 1):
                process, address = _start_proxy(directory, endpoint, i)
                processes.append(process)
                addresses.append(address)
            load_before = os.getloadavg()
            result = trio.run(_measure, endpoint, addresses, changes, args.clients)
            load_after = os.getloadavg()
        finally:
            for process in reversed(processes):
                process.kill()
                process.wait()
            shutil.rmtree(directory, ignore_errors=True)
        fleet, etcd_ms = result["fleet_ms"], result["etcd_event_ms"]
        rows = [
            [
                "PUT → serving on every proxy",
                f"{_pct(fleet, 0.5):.1f}",
                f"{_pct(fleet, 0.99):.1f}",
                f"{max(fleet):.1f}",
            ],
            [
                "PUT → watch event (etcd alone, same run)",
                f"{_pct(etcd_ms, 0.5):.1f}",
                f"{_pct(etcd_ms, 0.99):.1f}",
                f"{max(etcd_ms):.1f}",
            ],
        ]
        markdown = "\n\n".join(
            [
                f"### fleet-config: {args.proxies} proxies, {changes} changes, "
                f"{args.clients} callers per proxy ({result['load_calls']} calls, "
                f"{len(result['load_failures'])} failed); load average "
                f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
                report.markdown_table(["ms", "p50", "p99", "max"], rows),
            ]
        )
        print(markdown)
        data: dict[str, Any] = {
            "suite": self.name,
            "environment": report.environment(
                PACKAGES,
                {
                    "proxies": args.proxies,
                    "changes": changes,
                    "clients": args.clients,
                    "loadavg_after": load_after,
                },
            ),
            **result,
        }
        report.write_results(args.results_dir, f"fleet-config-{report.timestamp()}", data, markdown)
        return 1 if result["load_failures"] else 0


async def _put_when_up(endpoint: str, key: str, value: bytes) -> None:
    deadline = time.monotonic() + 30
    async with EtcdClient(endpoint) as client:
        while True:
            try:
                await client.put(key, value)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await trio.sleep(0.05)


register(FleetConfigSuite())
