"""`fleet-limits` suite: what a fleet rate limit (``scope: fleet``, GCRA in Redis, tokens in
batches) costs per request, beside a local one and none, in the same run.

One process (this one) builds the pipeline ``prism serve`` builds (``assembly.build_pipeline``)
for each case, with a real in-process memstore plugin behind it, and calls its namespace stages
and plugin (``Pipeline.unary``, an Execute ``get``) without the gRPC stack, as
``bench.stage_path`` does; a real ``redis-server`` (loopback, its own temporary directory) holds
the fleet limits. Cases, interleaved in every round: ``none`` (no rate limit), ``local`` (a
token bucket in the proxy), ``fleet`` (``max_batch`` 20, the default) and ``fleet-batch-1``
(``max_batch`` 1: one Redis call per request, what batching saves) and ``fleet-batch-100``.
Between calls the loop yields once to Trio, as a server does while it waits for the network:
the refill fetched ahead runs then. The limits are high
(1,000,000 calls/s) so nothing is refused: the figures are the cost of admitting a call.

Per case, medians over rounds: the proxy's CPU µs per call (``time.process_time``: the fleet
limit's background refills run in this process too), redis-server's CPU µs per call
(``/proc/PID/stat``), the p50 and p99 of each call's duration (calls one after another: a
call that waits for Redis shows here), and Redis calls per 1,000 requests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import report
from bench.errors import BenchError
from bench.procs import free_port, read_cpu_seconds
from bench.suites import register

PACKAGES = ("trio", "coredis", "prism-proxy")
NAMESPACE = "kv"
CASES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "local": {"rate": 1_000_000, "burst": 1_000_000},
    "fleet": {"rate": 1_000_000, "burst": 1_000_000, "scope": "fleet"},
    "fleet-batch-1": {"rate": 1_000_000, "burst": 1_000_000, "scope": "fleet", "max_batch": 1},
    "fleet-batch-100": {
        "rate": 1_000_000,
        "burst": 1_000_000,
        "scope": "fleet",
        "max_batch": 100,
    },
}


def log(message: str) -> None:
    print(f"[bench fleet-limits] {message}", file=sys.stderr, flush=True)


def config(redis_address: str, rate_limit: dict[str, Any] | None) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "name": NAMESPACE,
        "plugin": {"name": "memstore"},
        "access": {"anonymous": True},
    }
    if rate_limit is not None:
        namespace["traffic"] = {"rate_limit": rate_limit}
    return {
        "listen": "127.0.0.1:0",
        "admin": {"enabled": False},
        "tracing": {"enabled": False},
        "fleet": {"redis": {"address": redis_address}},
        "namespaces": [namespace],
    }


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not installed (apt install redis-server)")
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--save", "", "--appendonly", "no"]
    log_file = (directory / "redis.log").open("ab")
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise BenchError(f"redis-server exited: {(directory / 'redis.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise BenchError("redis-server did not start") from None
            time.sleep(0.02)


async def measure(
    names: list[str], redis_pid: int, redis_address: str, calls: int, rounds: int
) -> dict[str, Any]:
    from prism_plugin_memstore.plugin import MemstorePlugin

    from bench.stage_path import Call, Router, get_request, seed
    from prism.config.load import parse_config
    from prism.grpc.transport import PeerInfo
    from prism.proxy.assembly import build_pipeline
    from prism.proxy.metrics import ProxyMetrics
    from prism.proxy.pipeline import Pipeline
    from prism.sdk.instance import open_plugin

    peer = PeerInfo("127.0.0.1:40000", "tcp")
    request = get_request(NAMESPACE)
    async with open_plugin(MemstorePlugin()) as instance, trio.open_nursery() as nursery:
        await seed(instance, NAMESPACE)
        pipelines: dict[str, tuple[Pipeline, ProxyMetrics]] = {}
        for name in names:
            metrics = ProxyMetrics()
            pipeline = build_pipeline(
                parse_config(config(redis_address, CASES[name])), Router(instance), metrics
            )
            await nursery.start(pipeline.run)
            pipelines[name] = (pipeline, metrics)

        async def run(pipeline: Pipeline, count: int, durations: list[float] | None) -> None:
            clock = time.perf_counter
            for _ in range(count):
                started = clock()
                await pipeline.unary(Call(peer, []), request)  # type: ignore[arg-type]
                if durations is not None:
                    durations.append(clock() - started)
                # Between two calls a server waits for the network: other tasks (the fleet
                # limit's refill, fetched ahead) run then. The memstore call alone never yields.
                await trio.lowlevel.checkpoint()

        for pipeline, _ in pipelines.values():  # warm up (and the fleet's batch size adapts)
            await run(pipeline, max(calls // 5, 1), None)
        results: dict[str, dict[str, list[float]]] = {
            name: {"cpu_us": [], "redis_cpu_us": [], "p50_us": [], "p99_us": [], "redis_calls": []}
            for name in names
        }
        for round_no in range(rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                pipeline, metrics = pipelines[name]
                series = metrics.namespace(NAMESPACE)
                redis_calls = series.fleet_redis_calls.value
                durations: list[float] = []
                redis_cpu = read_cpu_seconds(redis_pid)
                cpu = time.process_time()
                await run(pipeline, calls, durations)
                await trio.sleep(0.05)  # the last background refill completes in this round
                cpu = time.process_time() - cpu
                redis_cpu = read_cpu_seconds(redis_pid) - redis_cpu
                durations.sort()
                result = results[name]
                result["cpu_us"].append(cpu / calls * 1e6)
                result["redis_cpu_us"].append(redis_cpu / calls * 1e6)
                result["p50_us"].append(durations[len(durations) // 2] * 1e6)
                result["p99_us"].append(durations[int(len(durations) * 0.99)] * 1e6)
                done = series.fleet_redis_calls.value - redis_calls
                result["redis_calls"].append(done / calls * 1000)
        nursery.cancel_scope.cancel()
    return {
        name: {
            **{key: statistics.median(values) for key, values in result.items()},
            "rounds": result,
        }
        for name, result in results.items()
    }


class FleetLimitSuite:
    name = "fleet-limits"
    summary = (
        "per-request cost of a fleet rate limit (Redis, batched) beside a local one and none: "
        "CPU µs/call of the proxy and of redis-server, p50/p99, Redis calls per 1000 requests"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--calls", type=int, default=5000, help="calls per case per round")
        parser.add_argument("--cases", help=f"comma-separated, from: {', '.join(CASES)}")

    def run(self, args: argparse.Namespace) -> int:
        if args.quick:
            args.calls = 500
        args.repeat = args.repeat or (1 if args.quick else 5)
        names = [n for n in (args.cases or ",".join(CASES)).split(",") if n]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            raise BenchError(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            redis, port = start_redis(Path(tmp))
            try:
                cases = trio.run(
                    measure, names, redis.pid, f"127.0.0.1:{port}", args.calls, args.repeat
                )
            finally:
                redis.kill()
                redis.wait()
        load_after = os.getloadavg()[0]
        markdown = _markdown(cases, args, load_before, load_after)
        print(markdown)
        data = {
            "environment": report.environment(PACKAGES),
            "args": vars(args),
            "loadavg": [load_before, load_after],
            "cases": cases,
        }
        path = report.write_results(
            args.results_dir, f"fleet-limits-{report.timestamp()}", data, markdown
        )
        log(f"results: {path}")
        log(json.dumps({name: case["cpu_us"] for name, case in cases.items()}))
        return 0


def _markdown(
    cases: dict[str, dict[str, Any]], args: argparse.Namespace, before: float, after: float
) -> str:
    local = cases.get("local", {}).get("cpu_us")
    header = [
        "case", "proxy CPU µs/call", "vs local", "redis CPU µs/call", "p50 µs", "p99 µs",
        "Redis calls / 1000 requests",
    ]  # fmt: skip
    rows = [
        [
            name,
            report.fmt_num(case["cpu_us"], 1),
            report.fmt_ratio(report.ratio(case["cpu_us"], local)),
            report.fmt_num(case["redis_cpu_us"], 1),
            report.fmt_num(case["p50_us"], 1),
            report.fmt_num(case["p99_us"], 1),
            report.fmt_num(case["redis_calls"], 1),
        ]
        for name, case in cases.items()
    ]
    title = (
        f"fleet-limits: {args.calls} calls per case per round, medians of {args.repeat} rounds, "
        f"load average {before:.1f} → {after:.1f}"
    )
    return f"### {title}\n\n" + report.markdown_table(header, rows)


register(FleetLimitSuite())
