"""`backends-clickhouse`: the clickhouse plugin through the proxy (in-process and sidecar) beside
httpx calling ClickHouse's HTTP interface directly, in one run.

A ClickHouse 18.16 server starts as a local process (the acceptance framework's fixture,
`tests/acceptance/backends.py`), a Memory table gets 10 000 rows, and one `prism serve` process
serves two namespaces on it: `ch_inproc` (mode in_process) and `ch_sidecar` (mode sidecar).
This process (Trio) then runs, in rounds that rotate the order, each case: a SELECT of one row
by id (`query` with a `$1` parameter; direct: the same statement with the value written into it
and the same output format), and a batched INSERT of 1000 rows (`execute` with `batch`; direct:
one `INSERT ... FORMAT TabSeparated` with the rows in the body). The proxy is reached with
prism's own Trio gRPC channel. Reported: medians over rounds of p50/p99 and calls/s, and the
p50 ratio to direct (the median of each round's ratio). The load average is printed beside the
figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import ROOT, ServerProcess
from bench.suites import register

ACCEPTANCE = ROOT / "tests" / "acceptance"
TABLE = "bench_events"
ROWS = 10_000
BATCH = 1000
POOL = 4
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
PACKAGES = ("httpx", "trio", "betterproto2", "prism-proxy")


def log(message: str) -> None:
    print(f"[bench backends/clickhouse] {message}", file=sys.stderr, flush=True)


def proxy_config(port: int, server: Any, runtime: Path) -> str:
    connection = server.connection
    namespaces = [
        {
            "name": name,
            "plugin": {"name": "clickhouse", "mode": mode},
            "config": {
                "host": connection["host"],
                "port": connection["port"],
                "pool_size": POOL,
                "client_name": f"bench-{name}",
            },
            "credentials": server.credentials.as_map(),
            "access": {"anonymous": True},  # the load generator sends no credentials
        }
        for name, mode in (("ch_inproc", "in_process"), ("ch_sidecar", "sidecar"))
    ]
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"enabled": False},
        "shutdown_grace": 2,
        "runtime_dir": str(runtime),
        "namespaces": namespaces,
    }
    return json.dumps(config, indent=2) + "\n"


async def _timed(call: Callable[[int], Awaitable[None]], count: int) -> dict[str, float]:
    import trio

    for i in range(min(50, count)):  # warm-up: connections, caches
        await call(i)
    latencies = []
    start = trio.current_time()
    for i in range(count):
        t0 = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - t0) * 1e6)
    elapsed = trio.current_time() - start
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies),
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rps": count / elapsed,
    }


async def _measure_round(
    address: str, server: Any, order: list[tuple[str, str]], calls: int, batches: int
) -> dict[str, dict[str, float]]:
    import httpx

    from prism import grpc as pg
    from prism._proto.prism.data.v1 import (
        ExecuteStatementRequest,
        ExecuteStatementResponse,
        QueryRequest,
        QueryResponse,
        Row,
        Value,
    )
    from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
    from prism.sdk.typed import pack, unpack

    credentials = server.credentials
    base = f"http://127.0.0.1:{server.connection['port']}"
    rows = [
        Row(values=[Value(int64_value=i), Value(string_value=f"event {i}")]) for i in range(BATCH)
    ]
    tsv = "".join(f"{i}\tevent {i}\n" for i in range(BATCH)).encode()
    results: dict[str, dict[str, float]] = {}
    async with (
        httpx.AsyncClient(
            base_url=base,
            auth=httpx.BasicAuth(credentials.username, credentials.password),
            limits=httpx.Limits(max_connections=POOL),
        ) as direct,
        pg.open_channel(address) as channel,
    ):

        def encoded(namespace: str, operation: str, params: Any) -> bytes:
            """Serialized up front, as a compiled client would (betterproto2's encoder is the
            load generator's cost, not the proxy's)."""
            return bytes(
                ExecuteRequest(namespace=namespace, operation=operation, typed_params=pack(params))
            )

        async def proxy(request: bytes, result: type) -> Any:
            response = await channel.unary_unary(EXECUTE, request, ExecuteResponse)
            return unpack(response.typed_result, result)

        selects = {
            path: [
                encoded(
                    path,
                    "query",
                    QueryRequest(
                        sql=f"SELECT id, s FROM {TABLE} WHERE id = $1",
                        params=[Value(int64_value=i * 7 % ROWS)],
                    ),
                )
                for i in range(calls + 50)
            ]
            for path in ("ch_inproc", "ch_sidecar")
        }
        inserts = {
            path: encoded(
                path,
                "execute",
                ExecuteStatementRequest(
                    sql=f"INSERT INTO {TABLE}_in (id, s) VALUES ($1, $2)", batch=rows
                ),
            )
            for path in ("ch_inproc", "ch_sidecar")
        }

        def select(path: str) -> Callable[[int], Awaitable[None]]:
            async def call(i: int) -> None:
                key = i * 7 % ROWS
                if path == "direct":
                    sql = (
                        f"SELECT id, s FROM {TABLE} WHERE id = {key} "
                        "FORMAT TabSeparatedWithNamesAndTypes"
                    )
                    answer = await direct.post("/", content=sql.encode())
                    assert answer.status_code == 200
                    assert answer.content.count(b"\n") == 3
                    return
                if path == "direct-external":  # the request the plugin sends, by hand
                    answer = await direct.post(
                        "/",
                        params={
                            "query": f"SELECT id, s FROM {TABLE} WHERE id = "
                            "(SELECT p1 FROM _prism_params) FORMAT TabSeparatedWithNamesAndTypes",
                            "_prism_params_structure": "p1 Int64",
                            "_prism_params_format": "TabSeparated",
                            "wait_end_of_query": "1",
                        },
                        files={"_prism_params": ("_prism_params", f"{key}\n".encode())},
                    )
                    assert answer.status_code == 200
                    assert answer.content.count(b"\n") == 3
                    return
                got = await proxy(selects[path][i], QueryResponse)
                assert got.rows[0].values[0].int64_value == key

            return call

        def insert(path: str) -> Callable[[int], Awaitable[None]]:
            async def call(i: int) -> None:
                if path in ("direct", "direct-external"):
                    answer = await direct.post(
                        "/", params={"query": f"INSERT INTO {TABLE}_in FORMAT TabSeparated"},
                        content=tsv,
                    )  # fmt: skip
                    assert answer.status_code == 200
                    return
                done = await proxy(inserts[path], ExecuteStatementResponse)
                assert done.rows_affected == BATCH

            return call

        for what, path in order:
            if what == "select":
                results[f"select by id, {path}"] = await _timed(select(path), calls)
            else:
                results[f"insert {BATCH} rows, {path}"] = await _timed(insert(path), batches)
    return results


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import trio

    sys.path.insert(0, str(ACCEPTANCE))
    from backends import ClickHouseServer  # the acceptance framework's fixture

    repeat = args.repeat or (1 if args.quick else 3)
    calls, batches = (200, 20) if args.quick else (2000, 100)
    calls, batches = args.calls or calls, args.batches or batches
    server = ClickHouseServer()
    server.start()
    try:
        server.query(f"CREATE TABLE {TABLE} (id Int64, s String) ENGINE = Memory")
        server.query(f"CREATE TABLE {TABLE}_in (id Int64, s String) ENGINE = Memory")
        server.query(
            f"INSERT INTO {TABLE} SELECT number, concat('event ', toString(number)) "
            f"FROM system.numbers LIMIT {ROWS}"
        )
        runtime = tmp / "run"
        runtime.mkdir()
        config_path = tmp / "prism.yaml"
        proxy = ServerProcess("proxy", "prism.cli.main", [], tmp / "proxy.log")
        proxy.argv = [sys.executable, "-m", "prism.cli.main", "serve", "--config", str(config_path)]
        config_path.write_text(proxy_config(proxy.port, server, runtime))
        proxy.start(timeout_s=60)
        try:
            address = f"127.0.0.1:{proxy.port}"
            cases = [
                *(("select", p) for p in ("direct", "direct-external", "ch_inproc", "ch_sidecar")),
                *(("insert", p) for p in ("direct", "ch_inproc", "ch_sidecar")),
            ]
            rounds = []
            loads = [os.getloadavg()[0]]
            for r in range(repeat):
                order = cases[r % len(cases) :] + cases[: r % len(cases)]
                rounds.append(trio.run(_measure_round, address, server, order, calls, batches))
                loads.append(os.getloadavg()[0])
                log(f"round {r + 1}/{repeat} done (load average {loads[-1]:.1f})")
        finally:
            proxy.stop()
    finally:
        server.stop()
    return {"rounds": rounds, "repeat": repeat, "load_average": loads}


def summarize(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    rounds = data["rounds"]
    out: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        out[name] = {k: report.median(r[name][k] for r in rounds) for k in rounds[0][name]}
        base = name.rsplit(", ", 1)[0] + ", direct"
        if name != base:
            out[name]["ratio_p50"] = report.median(
                r[name]["p50_us"] / r[base]["p50_us"] for r in rounds
            )
            out[name]["added_p50_us"] = report.median(
                r[name]["p50_us"] - r[base]["p50_us"] for r in rounds
            )
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    names = {
        "ch_inproc": "proxy, in-process",
        "ch_sidecar": "proxy, sidecar",
        "direct-external": "httpx direct, parameter as external data (the plugin's request)",
    }
    rows = []
    for name, m in summary.items():
        what, path = name.rsplit(", ", 1)
        rows.append(
            [
                f"{what}, {names.get(path, 'httpx direct')}",
                report.fmt_num(m["p50_us"]),
                report.fmt_num(m["p99_us"]),
                report.fmt_num(m["rps"]),
                report.fmt_num(m["added_p50_us"], 0) if "added_p50_us" in m else "—",
                report.fmt_ratio(m["ratio_p50"]) if "ratio_p50" in m else "—",
            ]
        )
    return report.markdown_table(
        ["case (1 caller)", "p50 µs", "p99 µs", "calls/s", "added p50 µs", "p50 vs direct"], rows
    )


class ClickHouseBackends:
    name = "backends-clickhouse"
    summary = "ClickHouse query and batched insert through the proxy vs httpx direct"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--calls", type=int, default=0, help="SELECTs per case per round")
        parser.add_argument("--batches", type=int, default=0, help="batched INSERTs per case")

    def run(self, args: argparse.Namespace) -> int:
        tmp = Path(tempfile.mkdtemp(prefix="bench-ch-"))
        try:
            data = measure(args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        summary = summarize(data)
        loads = ", ".join(f"{x:.1f}" for x in data["load_average"])
        markdown = "\n\n".join(
            [
                f"### ClickHouse (medians of {data['repeat']} rounds; load average {loads})",
                table(summary),
            ]
        )
        path = report.publish(
            args.results_dir,
            "backends-clickhouse",
            PACKAGES,
            {"load_average": data["load_average"]},
            summary,
            data,
            markdown,
        )
        log(f"results: {path}")
        return 0


register(ClickHouseBackends())
