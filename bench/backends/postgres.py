"""`backends` suite, PostgreSQL: a SELECT by primary key (the key-value `get`) through the proxy
— the postgres plugin in-process and as a sidecar — beside the plugin's driver called directly,
in one run.

A PostgreSQL 15 server starts as a local process (the acceptance framework's fixture,
`tests/acceptance/backends.py`), 1000 keys with 100-byte values go into the plugin's table, and
one `prism serve` process serves two namespaces on it: `pg_inproc` (mode in_process) and
`pg_sidecar` (mode sidecar). A load client process (`bench.backends.postgres_client`) then
runs, in rounds that rotate the order, each case: `direct` (psycopg's libpq core on Trio, the
plugin's prepared statement, a pool of the plugin's size), `in-process` and `sidecar` (grpcio's
asyncio client on the proxy's front door), at 1 and 32 concurrent callers, plus a 100-key
`get_many` at 1 caller against the direct client's one `WHERE key = ANY($1)` query. Reported:
medians over the rounds of p50/p99, throughput, the client's CPU per call and the proxy's (and
sidecar's) CPU per call; the added p50 over direct; the targets of ARCHITECTURE.md §7
(in-process added p50 ≤ 0.3 ms; get_many ≤ 2x direct). A same-run calibration (a fixed piece
of pure-Python work) is printed first: the machine is shared and its speed varies.

`--drivers` also runs the driver comparison that chose the plugin's driver
(`bench.backends.postgres_drivers`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.errors import BenchError
from bench.procs import ROOT, ServerProcess, read_cpu_seconds
from bench.suites import register

ACCEPTANCE = ROOT / "tests" / "acceptance"
TABLE = "bench_kv"
POOL = 4
VALUE = bytes(range(100))
TARGET_ADDED_P50_US = 300.0
TARGET_GET_MANY_RATIO = 2.0
PACKAGES = ("psycopg", "psycopg-binary", "grpcio", "trio", "betterproto2", "prism-proxy")


def log(message: str) -> None:
    print(f"[bench backends/postgres] {message}", file=sys.stderr, flush=True)


def calibration() -> dict[str, float]:
    """A fixed piece of pure-Python work (µs): compare runs on the same day only."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - start)
    return {"pure_python_200k_loop_ms": best * 1000}


def start_server() -> Any:
    sys.path.insert(0, str(ACCEPTANCE))
    from backends import PostgresServer  # the acceptance framework's fixture

    server = PostgresServer()
    server.start()
    return server


def populate(server: Any) -> None:
    from prism_plugin_postgres.kv import Table

    with server.client(server.credentials) as conn:
        for ddl in Table("", TABLE).ddl():
            conn.execute(ddl)
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} (key, value, version) VALUES (%s, %s, 1) "
                "ON CONFLICT (key) DO NOTHING",
                [(f"bench/{i:05d}".encode(), VALUE) for i in range(1000)],
            )


def proxy_config(port: int, server: Any, runtime: Path) -> str:
    connection = server.connection
    namespaces = []
    for name, mode in (("pg_inproc", "in_process"), ("pg_sidecar", "sidecar")):
        namespaces.append(
            {
                "name": name,
                "plugin": {"name": "postgres", "mode": mode},
                "config": {
                    "host": connection["host"],
                    "port": connection["port"],
                    "database": connection["database"],
                    "table": TABLE,
                    "pool_size": POOL,
                    "application_name": f"bench-{name}",
                },
                "credentials": server.credentials.as_map(),
            }
        )
    # The proxy's floor: the same calls on memstore (no backend at all), in-process.
    namespaces.append({"name": "mem_inproc", "plugin": {"name": "memstore", "mode": "in_process"}})
    for ns in namespaces:  # the load generators send no credentials
        ns["access"] = {"anonymous": True}
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"enabled": False},
        "shutdown_grace": 2,
        "runtime_dir": str(runtime),
        "namespaces": namespaces,
    }
    return json.dumps(config, indent=2) + "\n"


def fill_memstore(address: str) -> None:
    """The memstore namespace gets the same 1000 keys (through the front door)."""
    import grpc

    from prism._proto.prism.data.v1 import SetRequest
    from prism._proto.prism.proxy.v1 import ExecuteRequest
    from prism.sdk.typed import pack

    with grpc.insecure_channel(address) as channel:
        execute = channel.unary_unary("/prism.proxy.v1.DataProxy/Execute")
        for i in range(1000):
            params = SetRequest(key=f"bench/{i:05d}", value=VALUE)
            execute(
                bytes(
                    ExecuteRequest(
                        namespace="mem_inproc", operation="set", typed_params=pack(params)
                    )
                )
            )


def run_client(plan: dict[str, Any]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.backends.postgres_client"],
        input=json.dumps(plan).encode(),
        capture_output=True,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"the load client failed: {done.stderr.decode(errors='replace')}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def sidecar_pids(proxy_pid: int) -> list[int]:
    from bench.suites.plugins import child_pids

    return child_pids(proxy_pid)


def cases(quick: bool) -> list[dict[str, Any]]:
    calls = {1: 300 if quick else 3000, 32: 640 if quick else 9600}
    out = []
    for concurrency in (1, 32):
        for kind in ("direct", "in-process", "sidecar", "memstore"):
            out.append({"kind": kind, "concurrency": concurrency, "calls": calls[concurrency]})
    for kind in ("direct", "in-process", "sidecar", "memstore"):
        out.append({"kind": kind, "concurrency": 1, "calls": 60 if quick else 600, "batch": 100})
    return out


def label(case: dict[str, Any]) -> str:
    what = "get_many(100)" if case.get("batch") else "get"
    kind = "memstore in-process (the proxy's floor)" if case["kind"] == "memstore" else case["kind"]
    return f"{what} c={case['concurrency']} {kind}"


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    repeat = args.repeat or (1 if args.quick else 5)
    server = start_server()
    try:
        populate(server)
        conninfo = server.dsn(server.credentials.username, server.credentials.password)
        runtime = tmp / "run"
        runtime.mkdir()
        config_path = tmp / "prism.yaml"
        proxy = ServerProcess("proxy", "prism.cli.main", [], tmp / "proxy.log")
        proxy.argv = [sys.executable, "-m", "prism.cli.main", "serve", "--config", str(config_path)]
        config_path.write_text(proxy_config(proxy.port, server, runtime))
        proxy.start(timeout_s=60)
        try:
            address = f"127.0.0.1:{proxy.port}"
            fill_memstore(address)
            children = sidecar_pids(proxy.pid)
            plan_base = {"table": TABLE, "pool": POOL, "conninfo": conninfo, "address": address}
            all_cases = cases(args.quick)
            rounds: list[dict[str, dict[str, float]]] = []
            for r in range(repeat):
                shift = r % len(all_cases)
                order = all_cases[shift:] + all_cases[:shift]
                results: dict[str, dict[str, float]] = {}
                for case in order:
                    plan = {**plan_base, **case, "warmup": max(100, case["calls"] // 10)}
                    if case["kind"] == "direct":
                        plan["kind"] = "direct"
                    else:
                        plan["kind"] = "proxy"
                        plan["namespace"] = {
                            "in-process": "pg_inproc",
                            "sidecar": "pg_sidecar",
                            "memstore": "mem_inproc",
                        }[case["kind"]]
                    cpu0 = read_cpu_seconds(proxy.pid) + sum(map(_cpu, children))
                    result = run_client(plan)
                    cpu1 = read_cpu_seconds(proxy.pid) + sum(map(_cpu, children))
                    total = plan["calls"] + plan["warmup"]
                    result["proxy_cpu_us"] = (
                        (cpu1 - cpu0) / total * 1e6 if plan["kind"] == "proxy" else 0.0
                    )
                    results[label(case)] = result
                rounds.append(results)
                log(f"round {r + 1}/{repeat} done")
            return {"rounds": rounds, "repeat": repeat, "cases": [label(c) for c in all_cases]}
        finally:
            proxy.stop()
    finally:
        server.stop()


def _cpu(pid: int) -> float:
    try:
        return read_cpu_seconds(pid)
    except (OSError, BenchError):
        return 0.0


def medians(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in data["cases"]:
        rows = [r[name] for r in data["rounds"]]
        out[name] = {k: report.median(row[k] for row in rows) for k in rows[0]}
    # Added latency: the median over rounds of each round's difference to direct.
    for name in data["cases"]:
        if name.endswith(" direct") or "memstore" in name:
            continue
        base = name.rsplit(" ", 1)[0] + " direct"
        out[name]["added_p50_us"] = report.median(
            r[name]["p50_us"] - r[base]["p50_us"] for r in data["rounds"]
        )
        out[name]["ratio_p50"] = report.median(
            r[name]["p50_us"] / r[base]["p50_us"] for r in data["rounds"]
        )
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    rows = []
    for name, m in summary.items():
        rows.append(
            [
                name,
                report.fmt_num(m["p50_us"]),
                report.fmt_num(m["p99_us"]),
                report.fmt_num(m["rps"]),
                report.fmt_num(m.get("added_p50_us"), 0) if "added_p50_us" in m else "—",
                report.fmt_ratio(m.get("ratio_p50")) if "ratio_p50" in m else "—",
                report.fmt_num(m["client_cpu_us"]),
                report.fmt_num(m["proxy_cpu_us"]) if m["proxy_cpu_us"] else "—",
            ]
        )
    return report.markdown_table(
        [
            "case",
            "p50 µs",
            "p99 µs",
            "calls/s",
            "added p50 µs",
            "p50 vs direct",
            "client CPU µs/call",
            "proxy+plugin CPU µs/call",
        ],
        rows,
    )


def verdicts(summary: dict[str, dict[str, float]]) -> list[str]:
    out = []
    for c in (1, 32):
        added = summary[f"get c={c} in-process"]["added_p50_us"]
        ok = "meets" if added <= TARGET_ADDED_P50_US else "MISSES"
        out.append(
            f"- in-process added p50 at {c} caller(s): {added:.0f} µs — {ok} the "
            f"≤ {TARGET_ADDED_P50_US:.0f} µs target"
        )
    ratio = summary["get_many(100) c=1 in-process"]["ratio_p50"]
    ok = "meets" if ratio <= TARGET_GET_MANY_RATIO else "MISSES"
    out.append(f"- 100-key get_many in-process: {ratio:.2f}x direct — {ok} the ≤ 2x target")
    return out


class PostgresBackends:
    name = "backends-postgres"
    summary = "PostgreSQL SELECT by key through the proxy (in-process, sidecar) vs the driver"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--drivers",
            action="store_true",
            help="also compare the PostgreSQL drivers on Trio (bench.backends.postgres_drivers)",
        )

    def run(self, args: argparse.Namespace) -> int:
        return run(args)


def run(args: argparse.Namespace) -> int:
    calib = calibration()
    log(f"calibration: {calib['pure_python_200k_loop_ms']:.1f} ms for a fixed pure-Python loop")
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    try:
        data = measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = medians(data)
    markdown = "\n\n".join(
        [
            f"### PostgreSQL (medians of {data['repeat']} rounds; calibration "
            f"{calib['pure_python_200k_loop_ms']:.1f} ms)",
            table(summary),
            "\n".join(verdicts(summary)),
        ]
    )
    if getattr(args, "drivers", False):
        from bench.backends import postgres_drivers

        markdown += "\n\n" + postgres_drivers.main_markdown(args)
    path = report.publish(
        args.results_dir,
        "backends-postgres",
        PACKAGES,
        {"calibration": calib},
        summary,
        data,
        markdown,
    )
    log(f"results: {path}")
    return 0


register(PostgresBackends())
