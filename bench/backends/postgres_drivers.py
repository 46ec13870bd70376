"""Which PostgreSQL driver the postgres plugin runs on Trio: the candidates side by side.

`python -m bench.backends.postgres_drivers [--repeat N] [--quick]` (or `python -m bench
backends --drivers`; needs asyncpg and trio-asyncio, which `nox -s bench` installs). Against a
local PostgreSQL 15 (the acceptance framework's fixture), a prepared SELECT by primary key of a
100-byte value, with 1 and 32 concurrent callers on a pool of 8 connections:

- `psycopg sync (no Trio)`: psycopg 3's blocking API in a plain loop — the floor, 1 caller only;
- `libpq core + Trio wait`: psycopg's non-blocking libpq core driven by Trio wait functions
  (`prism_plugin_postgres.connection.PgConnection`: what the plugin uses);
- `psycopg sync in threads`: psycopg's blocking API in `trio.to_thread.run_sync` behind a
  `CapacityLimiter(8)`;
- `asyncpg via trio-asyncio` and `psycopg async via trio-asyncio`: the asyncio drivers inside
  `trio_asyncio.open_loop()`, each call through `aio_as_trio`.

Per candidate: p50/p99 latency, calls/s and this process's CPU time per call (all threads),
medians over rounds that rotate the order.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio_asyncio

from bench import report

ACCEPTANCE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "acceptance")
POOL = 8
KEYS = [f"key-{i}" for i in range(1000)]
SQL_DOLLAR = "SELECT value FROM bench_drivers WHERE key = $1"
SQL_PERCENT = "SELECT value FROM bench_drivers WHERE key = %s"


async def _load(
    call: Callable[[str], Awaitable[Any]], concurrency: int, total: int
) -> dict[str, float]:
    latencies: list[int] = []
    per = max(1, total // concurrency)

    async def worker(w: int) -> None:
        for i in range(per):
            key = KEYS[(w * 131 + i) % len(KEYS)]
            start = time.perf_counter_ns()
            value = await call(key)
            latencies.append(time.perf_counter_ns() - start)
            assert value is not None

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(concurrency):
            nursery.start_soon(worker, w)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)
    return {
        "p50_us": latencies[n // 2] / 1e3,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] / 1e3,
        "rps": n / elapsed,
        "cpu_us": cpu / n * 1e6,
    }


class _Pool:
    def __init__(self, items: list[Any]) -> None:
        self.free = list(items)
        self.slots = trio.Semaphore(len(items))

    async def use(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        async with self.slots:
            item = self.free.pop()
            try:
                return await fn(item, *args)
            finally:
                self.free.append(item)


async def libpq_trio(dsn: str, concurrency: int, total: int) -> dict[str, float]:
    from prism_plugin_postgres.connection import PgConnection, Statement
    from prism_plugin_postgres.values import TEXT

    conns = [await PgConnection.open(dsn, 16, lambda hit: None) for _ in range(POOL)]
    pool = _Pool(conns)

    async def one(conn: PgConnection, key: str) -> bytes | None:
        (result,) = await conn.run(
            [Statement(SQL_DOLLAR.encode(), [(key.encode(), TEXT, 0)], binary=True)]
        )
        return result.get_value(0, 0) if result.ntuples else None

    async def call(key: str) -> Any:
        return await pool.use(one, key)

    await _load(call, concurrency, 300)
    try:
        return await _load(call, concurrency, total)
    finally:
        for conn in conns:
            conn.close()


async def threads(dsn: str, concurrency: int, total: int) -> dict[str, float]:
    import psycopg

    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(POOL)]
    limiter = trio.CapacityLimiter(POOL)
    pool = _Pool(conns)

    def query(conn: Any, key: str) -> Any:
        row = conn.execute(SQL_PERCENT, (key,), prepare=True).fetchone()
        return row[0] if row else None

    async def one(conn: Any, key: str) -> Any:
        return await trio.to_thread.run_sync(query, conn, key, limiter=limiter)

    async def call(key: str) -> Any:
        return await pool.use(one, key)

    await _load(call, concurrency, 300)
    try:
        return await _load(call, concurrency, total)
    finally:
        for conn in conns:
            conn.close()


async def asyncpg_trio_asyncio(
    kw: dict[str, Any], concurrency: int, total: int
) -> dict[str, float]:
    import asyncpg

    async with trio_asyncio.open_loop():
        pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
            min_size=POOL, max_size=POOL, **kw
        )
        fetchval = trio_asyncio.aio_as_trio(pool.fetchval)

        async def call(key: str) -> Any:
            return await fetchval(SQL_DOLLAR, key)

        await _load(call, concurrency, 300)
        try:
            return await _load(call, concurrency, total)
        finally:
            await trio_asyncio.aio_as_trio(pool.close)()


async def psycopg_async_trio_asyncio(dsn: str, concurrency: int, total: int) -> dict[str, float]:
    import psycopg

    async with trio_asyncio.open_loop():
        connect = trio_asyncio.aio_as_trio(psycopg.AsyncConnection.connect)
        conns = [await connect(dsn, autocommit=True) for _ in range(POOL)]
        pool = _Pool(conns)

        async def query(conn: Any, key: str) -> Any:
            cursor = await conn.execute(SQL_PERCENT, (key,), prepare=True)
            row = await cursor.fetchone()
            return row[0] if row else None

        run = trio_asyncio.aio_as_trio(query)

        async def call(key: str) -> Any:
            return await pool.use(run, key)

        await _load(call, concurrency, 300)
        try:
            return await _load(call, concurrency, total)
        finally:
            for conn in conns:
                await trio_asyncio.aio_as_trio(conn.close)()


def sync_floor(dsn: str, total: int) -> dict[str, float]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(300):
            conn.execute(SQL_PERCENT, (KEYS[i % len(KEYS)],), prepare=True).fetchone()
        latencies = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(total):
            start = time.perf_counter_ns()
            conn.execute(SQL_PERCENT, (KEYS[i % len(KEYS)],), prepare=True).fetchone()
            latencies.append(time.perf_counter_ns() - start)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)
    return {
        "p50_us": latencies[n // 2] / 1e3,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] / 1e3,
        "rps": n / elapsed,
        "cpu_us": cpu / n * 1e6,
    }


CANDIDATES = (
    "libpq core + Trio wait",
    "psycopg sync in threads",
    "asyncpg via trio-asyncio",
    "psycopg async via trio-asyncio",
)


def measure(repeat: int, total: int) -> dict[str, list[dict[str, float]]]:
    import psycopg

    sys.path.insert(0, ACCEPTANCE)
    from backends import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        creds = server.credentials
        dsn = server.dsn(creds.username, creds.password)
        kw = {
            "host": "127.0.0.1",
            "port": server.server.port,
            "user": creds.username,
            "password": creds.password,
            "database": server.DATABASE,
        }
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_drivers (key text PRIMARY KEY, value bytea NOT NULL)")
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO bench_drivers VALUES (%s, %s)",
                    [(k, os.urandom(100)) for k in KEYS],
                )
        runs: dict[str, list[dict[str, float]]] = {}
        for r in range(repeat):
            runs.setdefault("psycopg sync (no Trio) c=1", []).append(sync_floor(dsn, total))
            order = CANDIDATES[r % len(CANDIDATES) :] + CANDIDATES[: r % len(CANDIDATES)]
            for concurrency in (1, 32):
                for name in order:
                    if name == "libpq core + Trio wait":
                        result = trio.run(libpq_trio, dsn, concurrency, total)
                    elif name == "psycopg sync in threads":
                        result = trio.run(threads, dsn, concurrency, total)
                    elif name == "asyncpg via trio-asyncio":
                        result = trio.run(asyncpg_trio_asyncio, kw, concurrency, total)
                    else:
                        result = trio.run(psycopg_async_trio_asyncio, dsn, concurrency, total)
                    runs.setdefault(f"{name} c={concurrency}", []).append(result)
            print(f"[bench postgres drivers] round {r + 1}/{repeat} done", file=sys.stderr)
        return runs
    finally:
        server.stop()


def markdown(runs: dict[str, list[dict[str, float]]], repeat: int) -> str:
    rows = []
    for name, results in sorted(runs.items(), key=lambda item: (item[0].split("c=")[1], item[0])):
        m = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rows.append(
            [
                name,
                report.fmt_num(m["p50_us"]),
                report.fmt_num(m["p99_us"]),
                report.fmt_num(m["rps"]),
                report.fmt_num(m["cpu_us"]),
            ]
        )
    header = ["driver", "p50 µs", "p99 µs", "calls/s", "client CPU µs/call"]
    return (
        f"### PostgreSQL drivers on Trio (prepared SELECT by key, pool of {POOL}; medians of "
        f"{repeat} rounds)\n\n" + report.markdown_table(header, rows)
    )


def main_markdown(args: argparse.Namespace) -> str:
    repeat = args.repeat or (1 if args.quick else 5)
    total = 500 if args.quick else 4000
    return markdown(measure(repeat, total), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backends.postgres_drivers")
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--quick", action="store_true")
    print(main_markdown(parser.parse_args()))


if __name__ == "__main__":
    main()
