"""The `backends` suite's PostgreSQL load client: closed-loop calls, timed one by one.

`python -m bench.backends.postgres_client` reads a JSON plan on stdin and prints one JSON
document: per-call latency percentiles, throughput and its own CPU time per call. Kinds:

- `direct`: the driver the postgres plugin uses, called directly — psycopg's libpq core on Trio
  (`prism_plugin_postgres.connection.PgConnection`), a pool of `pool` connections, the plugin's
  own prepared `SELECT ... WHERE key = $1` (and `key = ANY($1)` for `get_many`), no proxy, no
  SDK;
- `proxy`: the proxy's front door over gRPC (grpcio's asyncio client, requests serialized up
  front), `get` / `get_many` on one namespace; each request's first response is decoded and
  checked, the later ones by size.

`concurrency` tasks share the calls; every call picks keys from the populated set.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

KEY_COUNT = 1000


def key(i: int) -> str:
    return f"bench/{i % KEY_COUNT:05d}"


def summary(latencies_ns: list[int], elapsed: float, cpu: float) -> dict[str, float]:
    latencies_ns.sort()
    n = len(latencies_ns)
    return {
        "calls": n,
        "p50_us": latencies_ns[n // 2] / 1000,
        "p99_us": latencies_ns[min(n - 1, int(n * 0.99))] / 1000,
        "rps": n / elapsed,
        "client_cpu_us": cpu / n * 1e6,
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_direct(plan: dict[str, Any]) -> dict[str, float]:
    import trio
    from prism_plugin_postgres.connection import PgConnection, Statement
    from prism_plugin_postgres.kv import Table, _key, _key_array, _Sql

    sql = _Sql(Table("", plan["table"]))
    batch = plan.get("batch", 0)

    def statement(i: int) -> Statement:
        if batch:
            keys = [key(i * batch + j) for j in range(batch)]
            return Statement(sql.get_many, [_key_array(keys)], binary=True)
        return Statement(sql.get, [_key(key(i))], binary=True)

    async def main() -> dict[str, float]:
        conns = [
            await PgConnection.open(plan["conninfo"], 256, lambda hit: None)
            for _ in range(plan["pool"])
        ]
        free = list(conns)
        slots = trio.Semaphore(len(conns))

        async def call(i: int) -> None:
            async with slots:
                conn = free.pop()
                try:
                    (result,) = await conn.run([statement(i)])
                finally:
                    free.append(conn)
            assert result.ntuples == (batch or 1), result.error_message

        result = await load(call, plan, trio_run=True)
        for conn in conns:
            conn.close()
        return result

    return trio.run(main)


async def load(
    call: Callable[[int], Awaitable[None]], plan: dict[str, Any], *, trio_run: bool = False
) -> dict[str, float]:
    """`plan["warmup"]` then `plan["calls"]` calls over `plan["concurrency"]` tasks."""
    concurrency = plan["concurrency"]
    latencies: list[int] = []

    async def worker(offset: int, count: int, record: bool) -> None:
        for n in range(count):
            i = offset + n * concurrency
            start = time.perf_counter_ns()
            await call(i)
            if record:
                latencies.append(time.perf_counter_ns() - start)

    async def phase(total: int, record: bool) -> None:
        per = max(1, total // concurrency)
        if trio_run:
            import trio

            async with trio.open_nursery() as nursery:
                for w in range(concurrency):
                    nursery.start_soon(worker, w, per, record)
        else:
            await asyncio.gather(*(worker(w, per, record) for w in range(concurrency)))

    await phase(plan["warmup"], False)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await phase(plan["calls"], True)
    return summary(latencies, time.perf_counter() - t0, cpu_seconds() - cpu0)


def run_proxy(plan: dict[str, Any]) -> dict[str, float]:
    import grpc

    from prism._proto.prism.data.v1 import (
        GetManyRequest,
        GetManyResponse,
        GetRequest,
        GetResponse,
    )
    from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
    from prism.sdk.typed import pack, unpack

    batch = plan.get("batch", 0)
    namespace = plan["namespace"]

    def request(i: int) -> bytes:
        if batch:
            params: Any = GetManyRequest(keys=[key(i * batch + j) for j in range(batch)])
            op = "get_many"
        else:
            params, op = GetRequest(key=key(i)), "get"
        return bytes(ExecuteRequest(namespace=namespace, operation=op, typed_params=pack(params)))

    # Few distinct 100-key requests, so that each one's first (decoded) response is a small
    # share of the calls: the rest are checked by size.
    requests = [request(i) for i in range(10 if batch else KEY_COUNT)]

    async def main() -> dict[str, float]:
        async with grpc.aio.insecure_channel(
            plan["address"], options=[("grpc.enable_retries", 0)]
        ) as channel:
            execute = channel.unary_unary("/prism.proxy.v1.DataProxy/Execute")

            sizes: dict[int, int] = {}

            async def call(i: int) -> None:
                raw = await execute(requests[i % len(requests)])  # errors are the call's status
                # Each request's first response is decoded and checked; later ones by size, as
                # the direct path reads no values either (decoding a 100-item GetManyResponse
                # with betterproto2 took ~2 ms of this client's CPU, more than the proxy's).
                if sizes.get(i % len(requests)) == len(raw):
                    return
                response = ExecuteResponse.parse(raw)
                if batch:
                    items = unpack(response.typed_result, GetManyResponse).items
                    assert len(items) == batch
                    assert all(item.found for item in items)
                else:
                    assert unpack(response.typed_result, GetResponse).found
                sizes[i % len(requests)] = len(raw)

            return await load(call, plan)

    return asyncio.run(main())


def main() -> None:
    plan = json.load(sys.stdin)
    result = run_direct(plan) if plan["kind"] == "direct" else run_proxy(plan)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
