"""The backend plugins' own cost per call, without the proxy: what the `backends` suite's
"over memstore" column holds, taken apart on one event loop.

`python -m bench.backends.plugin_cost [--calls N] [--rounds R] [BACKEND ...]` (BACKEND: redis,
memcached, postgres; default all) starts each real server (the acceptance framework's fixtures),
opens each plugin with the SDK's `PluginHarness` in this process, and times, rounds interleaved
in rotating order, one by one:

- `get` and a 100-key `get_many` through `PluginInstance.execute_encoded` — what the proxy's
  in-process host calls with the request's bytes: the SDK (envelope, checks, codec) and the
  plugin, no gRPC, no proxy stages;
- the same read on the plugin's own driver alone (Redis: `resp.Pool.call`; PostgreSQL: the pool
  and `Lease.run`, and `PgConnection.run` alone), on the same event loop;
- the backend's own Python client (redis-py, pymemcache, psycopg, sync) called directly;
- memstore's `get` / `get_many` the same way: the SDK's share, a plugin that does no I/O.

Prints a markdown table: median over rounds of each batch's p50 (min..max), and this process's
CPU µs per call (the servers' CPU is not in it). The machine is shared: read the rows of one
run against each other, not against another run's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio

from bench.suites.backends.servers import module
from prism._proto.prism.data.v1 import GetManyRequest, GetRequest, SetManyRequest, SetRequest
from prism._proto.prism.plugin.v1 import ExecuteRequest
from prism.sdk.testing import PluginHarness
from prism.sdk.typed import pack

VALUE = bytes(range(100))
KEYS = [f"b{i:03d}" for i in range(100)]
PREFIX = "bench:"
LIVE = "(expires_at IS NULL OR expires_at > now())"

Call = Callable[[], Awaitable[Any]]


def encoded(operation: str, params: Any) -> bytes:
    return bytes(ExecuteRequest(operation=operation, typed_params=pack(params)))


GET = encoded("get", GetRequest(key="k"))
GET_MANY = encoded("get_many", GetManyRequest(keys=KEYS))


def blocking(function: Callable[[], Any]) -> Call:
    async def call() -> None:
        function()  # a sync client, called on the Trio thread: no other task runs meanwhile

    return call


async def batch(call: Call, n: int) -> tuple[float, float]:
    """p50 µs of `n` calls one after another, and this process's CPU µs per call."""
    latencies = []
    cpu0 = time.process_time()
    for _ in range(n):
        start = time.perf_counter_ns()
        await call()
        latencies.append(time.perf_counter_ns() - start)
    cpu = (time.process_time() - cpu0) / n * 1e6
    latencies.sort()
    return latencies[n // 2] / 1e3, cpu


class Cases:
    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack
        self.rows: list[tuple[str, Call, bool]] = []  # name, call, bulk

    def add(self, name: str, call: Call, bulk: bool = False) -> None:
        self.rows.append((name, call, bulk))

    async def plugin(self, name: str, factory: Any, config: Any, creds: Any = None) -> Any:
        harness = await self.stack.enter_async_context(
            PluginHarness(factory, config=config, credentials=creds or {})
        )
        await harness.execute("set", SetRequest(key="k", value=VALUE))
        items = [SetRequest(key=k, value=VALUE) for k in KEYS]
        await harness.execute("set_many", SetManyRequest(items=items))
        instance = harness.instance
        self.add(f"{name} get (SDK + plugin)", lambda: instance.execute_encoded(GET))
        self.add(
            f"{name} get_many (SDK + plugin)", lambda: instance.execute_encoded(GET_MANY), True
        )
        return harness


async def redis_cases(cases: Cases, servers: list[Any]) -> None:
    import redis
    from prism_plugin_redis import RedisPlugin

    server = module().RedisServer()
    server.start()
    servers.append(server)
    credentials = server.credentials
    config = {"port": server.connection["port"], "pool_size": 8, "key_prefix": PREFIX}
    harness = await cases.plugin("redis", RedisPlugin, config, credentials.as_map())
    pool = harness.plugin.pool
    stored = [PREFIX + k for k in KEYS]
    cases.add("redis GET (the plugin's driver)", lambda: pool.call("GET", PREFIX + "k"))
    cases.add("redis MGET (the plugin's driver)", lambda: pool.call("MGET", *stored), True)
    client = redis.Redis(
        port=server.connection["port"],
        username=credentials.username,
        password=credentials.password,
    )
    cases.add("redis GET (redis-py)", blocking(lambda: client.get(PREFIX + "k")))
    cases.add("redis MGET (redis-py)", blocking(lambda: client.mget(stored)), True)


async def memcached_cases(cases: Cases, servers: list[Any]) -> None:
    from prism_plugin_memcached import MemcachedPlugin
    from pymemcache.client.base import Client

    server = module().MemcachedServer()
    server.start()
    servers.append(server)
    config = {"port": server.connection["port"], "pool_size": 8, "key_prefix": PREFIX}
    await cases.plugin("memcached", MemcachedPlugin, config)
    client = Client(("127.0.0.1", server.connection["port"]))
    own = [f"direct:{k}" for k in KEYS]
    client.set("direct:k", VALUE)
    client.set_many(dict.fromkeys(own, VALUE))
    cases.add("memcached get (pymemcache)", blocking(lambda: client.get("direct:k")))
    cases.add("memcached get_many (pymemcache)", blocking(lambda: client.get_many(own)), True)


async def postgres_cases(cases: Cases, servers: list[Any]) -> None:
    import psycopg
    from prism_plugin_postgres import PostgresPlugin
    from prism_plugin_postgres.connection import Statement
    from prism_plugin_postgres.kv import _key

    server = module().PostgresServer()
    server.start()
    servers.append(server)
    credentials = server.credentials
    connection = server.connection
    config = {
        "host": connection["host"],
        "port": connection["port"],
        "database": connection["database"],
        "table": "bench_kv",
        "create_table": True,
        "pool_size": 8,
    }
    harness = await cases.plugin("postgres", PostgresPlugin, config, credentials.as_map())
    kv = harness.plugin._kv
    select = Statement(kv.sql.get, [_key("k")], binary=True)

    async def pool_and_run() -> None:
        async with kv.pool.connection() as lease:
            await lease.run([select])

    one = kv.pool._idle[0]
    cases.add("postgres SELECT (the plugin's pool + Lease.run)", pool_and_run)
    cases.add("postgres SELECT (PgConnection.run alone)", lambda: one.run([select]))
    direct = psycopg.connect(
        server.dsn(credentials.username, credentials.password),
        autocommit=True,
        prepare_threshold=0,
    )
    keys = [k.encode() for k in KEYS]
    get = f"SELECT value FROM bench_kv WHERE key = %b AND {LIVE}"
    get_many = f"SELECT key, value FROM bench_kv WHERE key = ANY(%b) AND {LIVE}"
    cases.add(
        "postgres SELECT (psycopg)", blocking(lambda: direct.execute(get, (b"k",)).fetchone())
    )
    cases.add(
        "postgres ANY(100 keys) (psycopg)",
        blocking(lambda: direct.execute(get_many, (keys,)).fetchall()),
        True,
    )


BACKENDS = {"redis": redis_cases, "memcached": memcached_cases, "postgres": postgres_cases}


async def run(backends: list[str], calls: int, rounds: int) -> list[str]:
    from prism_plugin_memstore import MemstorePlugin

    servers: list[Any] = []
    try:
        async with AsyncExitStack() as stack:
            cases = Cases(stack)
            await cases.plugin("memstore", MemstorePlugin, {})
            for name in backends:
                await BACKENDS[name](cases, servers)
            for _, call, _ in cases.rows:
                await batch(call, 100)  # warm up
            results: dict[str, list[tuple[float, float]]] = {n: [] for n, _, _ in cases.rows}
            rows = cases.rows
            for round_no in range(rounds):
                shift = round_no % len(rows)
                for name, call, bulk in rows[shift:] + rows[:shift]:
                    results[name].append(await batch(call, calls // 5 if bulk else calls))
    finally:
        for server in servers:
            server.stop()
    lines = ["| case | p50 µs (min..max) | CPU µs/call (this process) |", "|---|---|---|"]
    for name, _, _ in cases.rows:
        p50s = [r[0] for r in results[name]]
        cpu = statistics.median(r[1] for r in results[name])
        lines.append(
            f"| {name} | {statistics.median(p50s):,.0f} ({min(p50s):,.0f}..{max(p50s):,.0f}) "
            f"| {cpu:,.0f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backends.plugin_cost")
    parser.add_argument("backends", nargs="*", help=f"of {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--calls", type=int, default=1000, help="gets per case per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = trio.run(run, args.backends or list(BACKENDS), args.calls, args.rounds)
    print("\n".join(lines))
    print(
        f"\nMedians of {args.rounds} rounds ({args.calls} gets, {args.calls // 5} get_many per "
        f"case and round); {started}; load average {load:.1f} → {os.getloadavg()[0]:.1f}.",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
