"""`zerocopy` suite: large raw payloads through the proxy to a sidecar plugin, and back.

One proxy process (:mod:`bench.servers.counted_proxy`) serves the namespace ``raw`` with the
``rawbytes`` sidecar plugin (:mod:`bench.servers.rawbytes_plugin`). This process is the client
(prism.grpc, bytes built by hand, :mod:`bench.zerocopy_run`). For each total size (default
64 MiB and 1 GiB, in 1 MiB chunks) and each direction:

- **put**: one ExecuteStream of chunks to ``sink``, which answers with their SHA-256;
- **get**: one ExecuteStream from ``source``, which streams the chunks out;

with ``--streams N`` such streams at once (the total split between them). Reported, medians
of ``--repeat`` rounds: MiB/s, and the peak RSS (VmHWM, reset before each run) of the proxy
and of the plugin process, beside ARCHITECTURE.md §7's bound, 64 MiB + chunk x streams. The
same round also pushes the same bytes through a plain loopback TCP socket between two
processes (`sendall` / `recv_into`, no gRPC): the machine's ceiling for a Python process
today, so figures from two days compare as ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import report
from bench import zerocopy_run as run
from bench.procs import read_cpu_seconds
from bench.suites import register
from prism import grpc as pg

PACKAGES = ("h2", "trio", "betterproto2", "prism-proxy")
MIB = 1 << 20


def _socket_baseline(total: int, chunk: bytes) -> float:
    """Seconds to move ``total`` bytes over loopback TCP to a child that reads them."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the reader
        try:
            conn, _ = listener.accept()
            buffer = bytearray(len(chunk))
            got = 0
            while got < total:
                n = conn.recv_into(buffer)
                if not n:
                    break
                got += n
            conn.sendall(b"k")
        finally:
            os._exit(0)
    listener.close()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        start = time.perf_counter()
        sent = 0
        while sent < total:
            conn.sendall(chunk)
            sent += len(chunk)
        conn.recv(1)
        elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    return elapsed


async def _transfer(
    proxy: run.ProxyProcess, plugin: int, direction: str, total: int, streams: int, chunk: bytes
) -> dict[str, float]:
    pids = {"proxy": proxy.pid, "plugin": plugin}
    for pid in pids.values():
        run.reset_peak(pid)
    cpu_before = {role: read_cpu_seconds(pid) for role, pid in pids.items()}
    client_before = time.process_time()
    count = max(1, total // len(chunk) // streams)
    async with pg.open_channel(proxy.address) as channel:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                if direction == "put":
                    nursery.start_soon(_put, channel, chunk, count)
                else:
                    nursery.start_soon(_get, channel, len(chunk), count)
        elapsed = trio.current_time() - start
    moved = count * streams * len(chunk)
    cpu = {role: read_cpu_seconds(pid) - cpu_before[role] for role, pid in pids.items()}
    cpu["client"] = time.process_time() - client_before
    return {
        "mib_s": moved / MIB / elapsed,
        "seconds": elapsed,
        **{
            f"{role}_cpu_ms_per_mib": 1000 * seconds / (moved / MIB)
            for role, seconds in cpu.items()
        },
        "proxy_peak_mib": run.memory(pids["proxy"])[1] / MIB,
        "plugin_peak_mib": run.memory(pids["plugin"])[1] / MIB,
    }


async def _put(channel: pg.Channel, chunk: bytes, count: int) -> None:
    answer = await run.sink(channel, chunk, count)
    if int.from_bytes(answer[:8], "big") != count * len(chunk):
        raise RuntimeError(f"the plugin counted {answer[:8].hex()} bytes")
    digest = hashlib.sha256()
    if count <= 4:  # the digest check only where recomputing it here costs little
        for _ in range(count):
            digest.update(chunk)
        if digest.digest() != answer[8:]:
            raise RuntimeError("the plugin's digest differs")


async def _get(channel: pg.Channel, size: int, count: int) -> None:
    received = await run.source(channel, size, count)
    if received != size * count:
        raise RuntimeError(f"received {received} bytes, expected {size * count}")


async def _rounds(args: argparse.Namespace, totals: list[int], repeat: int) -> dict[str, Any]:
    chunk = os.urandom(args.chunk_kib * 1024)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with run.proxy_process(Path(tmp)) as proxy:
            async with pg.open_channel(proxy.address) as channel:
                plugin = await run.plugin_pid(channel)
                await run.sink(channel, chunk, 4)  # warm: connections open, code paths run
                await run.source(channel, len(chunk), 4)
                idle = {"proxy": run.memory(proxy.pid)[0], "plugin": run.memory(plugin)[0]}
            results["idle_rss_mib"] = {role: rss / MIB for role, rss in idle.items()}
            for total in totals:
                for direction in ("put", "get"):
                    key = f"{direction} {total // MIB} MiB"
                    results[key] = [
                        await _transfer(proxy, plugin, direction, total, args.streams, chunk)
                        for _ in range(repeat)
                    ]
                results[f"socket {total // MIB} MiB"] = [
                    total / MIB / _socket_baseline(total, chunk) for _ in range(repeat)
                ]
    return results


class ZeroCopySuite:
    name = "zerocopy"
    summary = "1 GiB of raw chunks through the proxy to a sidecar and back: MiB/s, peak RSS"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--totals-mib",
            type=int,
            nargs="+",
            help="total sizes, MiB (default 64 1024; --quick 16 64)",
        )
        parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size (1024)")
        parser.add_argument("--streams", type=int, default=1, help="concurrent streams (1)")

    def run(self, args: argparse.Namespace) -> int:
        totals = [t * MIB for t in (args.totals_mib or ([16, 64] if args.quick else [64, 1024]))]
        repeat: int = args.repeat or (1 if args.quick else 3)
        load = os.getloadavg()
        results = trio.run(_rounds, args, totals, repeat)
        chunk_mib = args.chunk_kib / 1024
        bound = 64 + chunk_mib * args.streams
        rows = []
        for total in totals:
            ceiling = statistics.median(results[f"socket {total // MIB} MiB"])
            for direction in ("put", "get"):
                runs = results[f"{direction} {total // MIB} MiB"]
                mib_s = statistics.median(r["mib_s"] for r in runs)
                proxy_peak = statistics.median(r["proxy_peak_mib"] for r in runs)
                plugin_peak = statistics.median(r["plugin_peak_mib"] for r in runs)
                cpu = [
                    statistics.median(r[f"{role}_cpu_ms_per_mib"] for r in runs)
                    for role in ("client", "proxy", "plugin")
                ]
                rows.append(
                    [
                        f"{direction} {total // MIB} MiB",
                        f"{mib_s:.0f}",
                        f"{mib_s / ceiling:.2f}",
                        f"{proxy_peak:.1f}",
                        f"{plugin_peak:.1f}",
                        " / ".join(f"{ms:.1f}" for ms in cpu),
                        f"{1000 / max(cpu):.0f}",
                        "yes" if max(proxy_peak, plugin_peak) < bound else "no",
                        "yes" if mib_s >= 200 else "no",
                    ]
                )
            rows.append(
                [f"plain TCP socket {total // MIB} MiB", f"{ceiling:.0f}", "1", "", "", "", ""]
            )
        idle = results["idle_rss_mib"]
        title = (
            f"### zerocopy: {args.chunk_kib} KiB chunks, {args.streams} stream(s), "
            f"median of {repeat}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"idle RSS: proxy {idle['proxy']:.1f} MiB, plugin {idle['plugin']:.1f} MiB; "
            f"bound 64 MiB + chunk x streams = {bound:.0f} MiB"
        )
        header = [
            "transfer",
            "MiB/s",
            "vs plain socket",
            "proxy peak RSS MiB",
            "plugin peak RSS MiB",
            "CPU ms per MiB: client / proxy / plugin",
            "MiB/s the busiest process allows per core",
            "within bound",
            "≥ 200 MiB/s",
        ]
        markdown = "\n\n".join([title, report.markdown_table(header, rows)])
        print(markdown)
        data = {
            "suite": self.name,
            "environment": report.environment(
                PACKAGES,
                {"repeat": repeat, "chunk_kib": args.chunk_kib, "streams": args.streams},
            ),
            "loadavg_at_end": os.getloadavg(),
            "results": results,
        }
        report.write_results(args.results_dir, f"zerocopy-{report.timestamp()}", data, markdown)
        return 0


register(ZeroCopySuite())
