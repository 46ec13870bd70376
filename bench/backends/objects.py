"""`python -m bench backends-objects`: large objects through the proxy to the objectstore plugin
as a sidecar, on a real SeaweedFS (the acceptance framework's fixture).

For each object size (default 64 MiB and 1 GiB) a fresh `prism serve` (so each process's peak
RSS, VmHWM, belongs to that size alone) takes, `--repeat` times, a put of the object streamed
from a generator (one 1 MiB buffer sent again and again: the client holds no object) and a get
whose chunks are counted and dropped; then the peak RSS of the proxy and of its sidecar is read.
In the same rounds, the plugin alone (`PluginHarness(typed=True)` in this process: the same S3
code, no proxy, no gRPC) puts and gets the same object: the baseline.

Each proxy first takes a 16 MiB put and get, not timed (the sidecar's pool, the first
connections). Beside the throughput, the CPU the proxy and its sidecar spent per MiB.
`--baseline DIR` (an export of another commit) also starts, for each size, a proxy from that
tree (its sidecar too: PYTHONPATH is inherited), measured in the same rounds, interleaved, as
variant "before": before and after in one run. The plugin alone runs this tree's code only.

Targets (issue 11, ARCHITECTURE.md §7): the peak RSS of the proxy and of the plugin stays below
64 MiB + chunk size x concurrent streams whatever the object's size (the 64 MiB and 1 GiB rows
show it), and throughput ≥ 200 MiB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from bench import report
from bench.errors import BenchError
from bench.procs import read_cpu_seconds, read_peak_rss_bytes, read_rss_bytes
from bench.suites import register as register_suite
from bench.suites.backends import servers
from bench.suites.plugins import PrismProcess, child_pids

MIB = 1 << 20
CHUNK = MIB
PART = 8 * MIB
PACKAGES = ("trio", "h2", "httpx", "botocore", "betterproto2", "prism-proxy")
WARM_UP = 16 * MIB


async def _source(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(CHUNK)
    sent = 0
    while sent < size:
        piece = block if size - sent >= CHUNK else block[: size - sent]
        sent += len(piece)
        yield piece


def _cpu(pids: list[int]) -> float:
    return sum(read_cpu_seconds(pid) for pid in pids)


async def _through_proxy(address: str, key: str, size: int, pids: list[int]) -> dict[str, float]:
    """Put then get ``size`` bytes; seconds of each, and the CPU seconds ``pids`` spent."""
    import prism.client as pc

    async with pc.connect(address) as client:
        objects = client.objects("objects")
        cpu = _cpu(pids)
        started = time.perf_counter()
        written = await objects.put(key, _source(size), size=size)
        put_s = time.perf_counter() - started
        put_cpu = _cpu(pids) - cpu
        assert written.size == size
        cpu = _cpu(pids)
        started = time.perf_counter()
        got = 0
        async with objects.get(key) as reader:
            async for chunk in reader:
                got += len(chunk)
        get_s = time.perf_counter() - started
        get_cpu = _cpu(pids) - cpu
        assert got == size, (got, size)
        await objects.delete(key)
    return {"put_s": put_s, "get_s": get_s, "put_cpu_s": put_cpu, "get_cpu_s": get_cpu}


async def _plugin_alone(config: dict[str, Any], credentials: dict[str, str], key: str, size: int
                        ) -> dict[str, float]:  # fmt: skip
    from prism_plugin_objectstore import ObjectStorePlugin

    from prism._proto.prism.data.v1 import DeleteObjectRequest, GetObjectRequest, PutObjectRequest
    from prism.sdk.testing import PluginHarness

    async with PluginHarness(
        ObjectStorePlugin, config=config, credentials=credentials, typed=True
    ) as h:
        cpu = time.process_time()
        started = time.perf_counter()
        async with h.stream("put_object", PutObjectRequest(key=key, size=size)) as stream:
            async for chunk in _source(size):
                await stream.send(chunk)
            await stream.end()
            assert await stream.receive() is not None
        put_s = time.perf_counter() - started
        put_cpu = time.process_time() - cpu
        cpu = time.process_time()
        started = time.perf_counter()
        got = -1  # the header
        async with h.stream("get_object", GetObjectRequest(key=key)) as stream:
            async for chunk in stream:
                got += 1 if got < 0 else len(chunk)  # type: ignore[arg-type]
        get_s = time.perf_counter() - started
        get_cpu = time.process_time() - cpu
        assert got == size, (got, size)
        await h.execute("delete_object", DeleteObjectRequest(key=key))
    return {"put_s": put_s, "get_s": get_s, "put_cpu_s": put_cpu, "get_cpu_s": get_cpu}


def _sidecars(proxy_pid: int) -> list[int]:
    found = []
    for pid in child_pids(proxy_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"prism.hosting.launcher" in argv:
            found.append(pid)
    return found


class ObjectsSuite:
    name = "backends-objects"
    summary = (
        "large objects (64 MiB, 1 GiB) put and got through the proxy to a sidecar: MiB/s, peak RSS"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--sizes", default="64,1024", help="object sizes in MiB, comma-separated"
        )
        parser.add_argument(
            "--baseline",
            type=Path,
            default=None,
            help="a tree of another commit (git archive): its proxy and sidecar measured in "
            "the same rounds, as variant 'before'",
        )

    def run(self, args: argparse.Namespace) -> int:
        repeat = args.repeat or (1 if args.quick else 3)
        baseline: Path | None = args.baseline.resolve() if args.baseline else None
        if baseline is not None and not (baseline / "prism" / "cli" / "main.py").is_file():
            raise BenchError(f"--baseline {baseline}: no prism/cli/main.py there")
        sizes = [int(s) * MIB for s in args.sizes.split(",")]
        if args.quick:
            sizes = [min(s, 64 * MIB) for s in sizes]
        stamp = report.timestamp()
        logs = args.results_dir / "logs" / f"backends-objects-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        settings = {
            "repeat": repeat,
            "sizes_mib": [s // MIB for s in sizes],
            "part": PART,
            "baseline": str(baseline) if baseline else None,
        }
        env = report.environment(PACKAGES, {**settings, "chunk": CHUNK})
        rows: list[dict[str, Any]] = []
        seaweed = servers.module().SeaweedServer()
        try:
            seaweed.start()
            config = {
                "endpoint": seaweed.endpoint,
                "bucket": seaweed.BUCKET,
                "chunk_size": CHUNK,
                "part_size": PART,
            }
            credentials = seaweed.credentials.as_map()
            for size in sizes:
                rows += self._one_size(size, repeat, config, credentials, logs, baseline)
        finally:
            seaweed.stop()
        data = {"suite": self.name, "environment": env, "rows": rows}
        table = _table(rows)
        path = report.write_results(args.results_dir, f"{self.name}-{stamp}", data, table)
        print(table)
        print(f"results: {path}", file=sys.stderr)
        return 0

    def _one_size(self, size: int, repeat: int, config: dict[str, Any],
                  credentials: dict[str, str], logs: Path, baseline: Path | None
                  ) -> list[dict[str, Any]]:  # fmt: skip
        """One row per variant ("after": this tree; "before": ``baseline``), rounds
        interleaved; the plugin alone (this tree) in the same rounds, on the "after" row."""
        variants: dict[str, Path | None] = {"after": None}
        if baseline is not None:
            variants["before"] = baseline
        with tempfile.TemporaryDirectory(prefix="prism-bench-obj-") as tmp_name:
            tmp = Path(tmp_name)
            proxies: dict[str, PrismProcess] = {}
            try:
                for name, root in variants.items():
                    proxies[name] = self._start_proxy(
                        tmp / name,
                        name,
                        root,
                        config,
                        credentials,
                        logs / f"proxy-{name}-{size // MIB}.log",
                    )
                idle = {
                    name: (
                        read_rss_bytes(proxy.pid) or 0,
                        max((read_rss_bytes(p) or 0 for p in _sidecars(proxy.pid)), default=0),
                    )
                    for name, proxy in proxies.items()
                }
                pids = {name: [proxy.pid, *_sidecars(proxy.pid)] for name, proxy in proxies.items()}
                for name, proxy in proxies.items():  # warm-up, not timed
                    trio.run(_through_proxy, f"127.0.0.1:{proxy.port}", "bench/warm", WARM_UP,
                             pids[name])  # fmt: skip
                trio.run(_plugin_alone, config, credentials, "bench/warm-alone", WARM_UP)
                rounds: list[dict[str, Any]] = []
                for i in range(repeat):
                    one: dict[str, Any] = {"load": os.getloadavg()[0], "utc": report.timestamp()}
                    for name, proxy in proxies.items():
                        one[name] = trio.run(_through_proxy, f"127.0.0.1:{proxy.port}",
                                             f"bench/{name}-{i}", size, pids[name])  # fmt: skip
                    one["alone"] = trio.run(
                        _plugin_alone, config, credentials, f"bench/alone-{i}", size
                    )
                    rounds.append(one)
                peaks = {
                    name: (
                        proxy.peak_rss_bytes() or 0,
                        max((read_peak_rss_bytes(p) or 0 for p in _sidecars(proxy.pid)),
                            default=0),
                    )
                    for name, proxy in proxies.items()
                }  # fmt: skip
            finally:
                for proxy in proxies.values():
                    proxy.stop()

        def median(path: str, what: str) -> float:
            return report.median(r[path][what] for r in rounds)

        def mibps(path: str, what: str) -> float:
            return report.median(size / MIB / r[path][what] for r in rounds)

        rows = []
        for name in variants:
            row: dict[str, Any] = {
                "variant": name,
                "size_mib": size // MIB,
                "proxy_put_mibps": mibps(name, "put_s"),
                "proxy_get_mibps": mibps(name, "get_s"),
                "put_cpu_ms_per_mib": median(name, "put_cpu_s") * 1000 / (size / MIB),
                "get_cpu_ms_per_mib": median(name, "get_cpu_s") * 1000 / (size / MIB),
                "proxy_idle_rss_mib": idle[name][0] / MIB,
                "sidecar_idle_rss_mib": idle[name][1] / MIB,
                "proxy_peak_rss_mib": peaks[name][0] / MIB,
                "sidecar_peak_rss_mib": peaks[name][1] / MIB,
                "load_avg_1m": [r["load"] for r in rounds],
                "utc": [r["utc"] for r in rounds],
                "rounds": [{k: r[k] for k in (name, "alone", "load")} for r in rounds],
            }
            if name == "after":
                row["alone_put_mibps"] = mibps("alone", "put_s")
                row["alone_get_mibps"] = mibps("alone", "get_s")
                row["alone_put_cpu_ms_per_mib"] = median("alone", "put_cpu_s") * 1000 / (size / MIB)
            rows.append(row)
        return rows

    @staticmethod
    def _start_proxy(tmp: Path, name: str, root: Path | None, config: dict[str, Any],
                     credentials: dict[str, str], log: Path) -> PrismProcess:  # fmt: skip
        tmp.mkdir()
        config_path = tmp / "prism.yaml"
        proxy = PrismProcess(
            f"proxy-{name}", lambda port: ["serve", "--config", str(config_path)], log, root=root
        )
        runtime = tmp / "run"
        runtime.mkdir(mode=0o700)
        namespace = {
            "name": "objects",
            "plugin": {"name": "objectstore", "mode": "sidecar"},
            "config": config,
            "credentials": credentials,
            "access": {"anonymous": True},
        }
        proxy_config = {
            "listen": f"127.0.0.1:{proxy.port}",
            "shutdown_grace": 2,
            "runtime_dir": str(runtime),
            "admin": {"enabled": False},
            "namespaces": [namespace],
        }
        config_path.write_text(json.dumps(proxy_config, indent=2) + "\n")
        proxy.start(timeout_s=60)
        return proxy


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | object | put via proxy | get via proxy | CPU ms/MiB put, get (proxy + "
        "sidecar) | put, get: plugin alone | proxy RSS idle → peak | sidecar RSS idle → peak "
        "| load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loads = ", ".join(f"{x:.1f}" for x in r["load_avg_1m"])
        alone = (
            f"{r['alone_put_mibps']:.0f}, {r['alone_get_mibps']:.0f} MiB/s"
            if "alone_put_mibps" in r
            else "—"
        )
        lines.append(
            f"| {r['variant']} | {r['size_mib']} MiB | {r['proxy_put_mibps']:.0f} MiB/s "
            f"| {r['proxy_get_mibps']:.0f} MiB/s "
            f"| {r['put_cpu_ms_per_mib']:.1f}, {r['get_cpu_ms_per_mib']:.1f} | {alone} "
            f"| {r['proxy_idle_rss_mib']:.0f} → {r['proxy_peak_rss_mib']:.0f} MiB "
            f"| {r['sidecar_idle_rss_mib']:.0f} → {r['sidecar_peak_rss_mib']:.0f} MiB | {loads} |"
        )
    return "\n".join(lines)


register_suite(ObjectsSuite())
