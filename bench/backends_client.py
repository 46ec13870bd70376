"""The `backends` suite's load client: GETs and 100-key bulk reads, timed one by one, through
the proxy (grpcio sync, bytes in and out, requests serialized up front) and with each backend's
own Python client called directly, in the same process, rounds interleaved.

Run as `python -m bench.backends_client` with a JSON plan on stdin; prints its measurements as
one JSON document on stdout and progress on stderr. Concurrency N means N caller threads in
this process, each in a closed loop (grpcio and the backends' clients release the GIL while
they wait, as an application's threads would).
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from bench.errors import BenchError
from bench.plugin_client import CHANNEL_OPTIONS, METHOD, percentile, value
from bench.procs import read_cpu_seconds, read_system_busy_seconds
from bench.suites.backends import BACKENDS, Direct, load_backends
from bench.suites.plugins import child_pids
from prism._proto.prism.data.v1 import (
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    SetManyRequest,
    SetRequest,
)
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.sdk.typed import pack, unpack

KEYS = 64
FLOOR = "memstore"  # the proxy's own cost: an in-process plugin that does no I/O

Call = Callable[[int], Any]


def log(message: str) -> None:
    print(f"[bench backends client] {message}", file=sys.stderr, flush=True)


def key(i: int) -> str:
    return f"get-{i:04d}"


def bulk_keys(n: int) -> list[str]:
    return [f"bulk-{i:04d}" for i in range(n)]


def execute_request(namespace: str, operation: str, params: Any) -> bytes:
    return bytes(
        ExecuteRequest(namespace=namespace, operation=operation, typed_params=pack(params))
    )


def calibrate() -> dict[str, float]:
    """Same-run machine speed: a fixed pure-Python workload (median of 5, ms)."""

    def work() -> int:
        total = 0
        for i in range(300_000):
            total += i * i % 7
        return total

    runs = []
    for _ in range(5):
        start = time.perf_counter()
        work()
        runs.append((time.perf_counter() - start) * 1000)
    return {"python_loop_ms": statistics.median(runs), "loadavg_1m": _loadavg()}


def _loadavg() -> float:
    import os

    return os.getloadavg()[0]


class Proxy:
    def __init__(self, channel: grpc.Channel) -> None:
        self.call = channel.unary_unary(METHOD)

    def execute(self, request: bytes) -> ExecuteResponse:
        return ExecuteResponse.parse(self.call(request))  # an error status raises RpcError

    def seed(self, namespace: str, keys: Sequence[str], data: bytes) -> None:
        items = [SetRequest(key=k, value=data) for k in keys]
        self.execute(execute_request(namespace, "set_many", SetManyRequest(items=items)))

    def get_call(self, namespace: str, data: bytes) -> Call:
        requests = [execute_request(namespace, "get", GetRequest(key=key(i))) for i in range(KEYS)]
        sizes = []
        for request in requests:
            raw = self.call(request)
            got = unpack(ExecuteResponse.parse(raw).typed_result, GetResponse)
            if not got.found or got.value != data:
                raise BenchError(f"{namespace}: get returned {got!r}, not the value seeded")
            sizes.append(len(raw))
        call = self.call

        def get(i: int) -> None:
            if len(call(requests[i % KEYS])) != sizes[i % KEYS]:
                raise BenchError(f"{namespace}: a get answered differently than checked")

        return get

    def bulk_call(self, namespace: str, keys: list[str], data: bytes) -> Call:
        request = execute_request(namespace, "get_many", GetManyRequest(keys=keys))
        raw = self.call(request)
        got = unpack(ExecuteResponse.parse(raw).typed_result, GetManyResponse)
        if [g.value for g in got.items] != [data] * len(keys):
            raise BenchError(f"{namespace}: get_many did not return the values seeded")
        size, call = len(raw), self.call

        def get_many(i: int) -> None:
            if len(call(request)) != size:
                raise BenchError(f"{namespace}: a get_many answered differently than checked")

        return get_many


def direct_calls(direct: Direct, data: bytes, keys: list[str]) -> tuple[Call, Call]:
    names = [f"direct:{key(i)}" for i in range(KEYS)]
    bulk = [f"direct:{k}" for k in keys]
    direct.seed(names + bulk, data)
    if any(direct.get(n) != data for n in names) or direct.get_many(bulk) != [data] * len(bulk):
        raise BenchError("the direct client does not read back what it seeded")

    def get(i: int) -> None:
        if direct.get(names[i % KEYS]) is None:
            raise BenchError("the direct client lost a key")

    def get_many(i: int) -> None:
        direct.get_many(bulk)

    return get, get_many


def timed(call: Call, calls: int, threads: int) -> tuple[list[int], float]:
    """Latencies (ns) of `calls` calls spread over `threads` closed-loop callers; wall time."""
    clock = time.perf_counter_ns
    if threads == 1:
        latencies = [0] * calls
        start = time.perf_counter()
        for i in range(calls):
            t0 = clock()
            call(i)
            latencies[i] = clock() - t0
        return latencies, time.perf_counter() - start
    per = max(1, calls // threads)
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def caller(n: int) -> None:
        own = results[n]
        barrier.wait()
        try:
            for i in range(per):
                t0 = clock()
                call(n * per + i)
                own.append(clock() - t0)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    if errors:
        raise BenchError(f"a caller failed: {errors[0]!r}")
    return [lat for own in results for lat in own], wall


Pids = dict[str, list[int]]  # "proxy" (with its sidecar), "backend" → processes


def _cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each pid and of its children: PostgreSQL serves each connection in a
    child of the postmaster (the server pid), which itself does almost nothing."""
    seconds: dict[int, float] = {}
    for pid in pids:
        for each in (pid, *child_pids(pid)):
            with contextlib.suppress(BenchError):  # a child that exited meanwhile
                seconds[each] = read_cpu_seconds(each)
    return seconds


def _cpu_delta(before: dict[int, float], pids: list[int]) -> float:
    after = _cpu(pids)
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def measure(call: Call, calls: int, threads: int, pids: Pids) -> dict[str, Any]:
    gc.collect()
    gc.disable()
    try:
        cpu0 = {n: _cpu(p) for n, p in pids.items()}
        busy0 = read_system_busy_seconds()
        latencies, wall = timed(call, calls, threads)
        busy = read_system_busy_seconds() - busy0
        cpu = {n: _cpu_delta(cpu0[n], p) if p else None for n, p in pids.items()}
    finally:
        gc.enable()
    latencies.sort()
    done = len(latencies)
    return {
        "calls": done,
        "p50_us": percentile(latencies, 0.50) / 1e3,
        "p99_us": percentile(latencies, 0.99) / 1e3,
        "per_s": done / wall,
        "cpu_us_per_call": {n: None if c is None else c / done * 1e6 for n, c in cpu.items()},
        "machine_busy_share": busy / wall / 2,  # of the 2 CPUs
    }


def run(plan: dict[str, Any]) -> dict[str, Any]:
    load_backends()
    data = value(plan["value_size"])
    bulk = bulk_keys(plan["bulk_keys"])
    rows: list[dict[str, Any]] = []
    calibration = calibrate()
    log(f"calibration: {calibration}")
    baseline_plan = plan.get("baseline")
    with contextlib.ExitStack() as stack:
        channel = stack.enter_context(
            grpc.insecure_channel(plan["address"], options=CHANNEL_OPTIONS)
        )
        proxy = Proxy(channel)
        proxy.seed(FLOOR, [key(i) for i in range(KEYS)], data)
        targets: list[tuple[str, str, Call, Pids]] = []
        bulk_targets: list[tuple[str, str, Call, Pids]] = []
        directs: list[Direct] = []
        floor_pids: Pids = {"proxy": [plan["proxy_pid"]], "backend": []}
        targets.append((FLOOR, "in_process", proxy.get_call(FLOOR, data), floor_pids))
        baseline: Proxy | None = None
        if baseline_plan is not None:  # another tree's proxy, in-process namespaces only
            baseline = Proxy(
                stack.enter_context(
                    grpc.insecure_channel(baseline_plan["address"], options=CHANNEL_OPTIONS)
                )
            )
            baseline.seed(FLOOR, [key(i) for i in range(KEYS)], data)
            base_floor: Pids = {"proxy": [baseline_plan["pid"]], "backend": []}
            targets.append((FLOOR, "baseline", baseline.get_call(FLOOR, data), base_floor))
        for entry in plan["backends"]:
            backend = BACKENDS[entry["name"]]
            namespaces: dict[str, str] = entry["namespaces"]  # mode → namespace
            sidecars: list[int] = entry["sidecar_pids"]
            seed_ns = namespaces["in_process"]
            proxy.seed(seed_ns, [key(i) for i in range(KEYS)], data)
            proxy.seed(seed_ns, bulk, data)
            direct = backend.direct(entry["direct_spec"])
            directs.append(direct)
            get, get_many = direct_calls(direct, data, bulk)
            server: list[int] = [entry["server_pid"]]
            direct_pids: Pids = {"proxy": [], "backend": server}
            targets.append((backend.name, "direct", get, direct_pids))
            bulk_targets.append((backend.name, "direct", get_many, direct_pids))
            for mode, namespace in namespaces.items():
                own = [plan["proxy_pid"], *(sidecars if mode == "sidecar" else [])]
                pids: Pids = {"proxy": own, "backend": server}
                targets.append((backend.name, mode, proxy.get_call(namespace, data), pids))
                bulk_targets.append(
                    (backend.name, mode, proxy.bulk_call(namespace, bulk, data), pids)
                )
            if baseline is not None:  # the same server, table and key prefix: seeded above
                pids = {"proxy": [baseline_plan["pid"]], "backend": server}
                seeded = namespaces["in_process"]
                targets.append((backend.name, "baseline", baseline.get_call(seeded, data), pids))
                bulk_targets.append(
                    (backend.name, "baseline", baseline.bulk_call(seeded, bulk, data), pids)
                )
        for _, _, call, _ in targets:
            timed(call, plan["warmup"], 1)
        for _, _, call, _ in bulk_targets:
            timed(call, max(1, plan["warmup"] // 10), 1)
        log(f"checked and warmed up {len(targets)} GET and {len(bulk_targets)} bulk targets")
        for round_no in range(plan["rounds"]):
            for threads in plan["concurrency"]:
                calls = plan["calls"] * (4 if threads > 1 else 1)
                shift = round_no % len(targets)
                for name, mode, call, pids in targets[shift:] + targets[:shift]:
                    row = measure(call, calls, threads, pids)
                    rows.append({"round": round_no, "part": "get", "backend": name,
                                 "mode": mode, "threads": threads, **row})  # fmt: skip
                    log(f"round {round_no + 1} get {name:9} {mode:10} x{threads:<2} p50 "
                        f"{row['p50_us']:6.0f} µs p99 {row['p99_us']:6.0f} µs "
                        f"{row['per_s']:7.0f}/s")  # fmt: skip
            shift = round_no % len(bulk_targets)
            for name, mode, call, pids in bulk_targets[shift:] + bulk_targets[:shift]:
                row = measure(call, plan["bulk_calls"], 1, pids)
                rows.append({"round": round_no, "part": "bulk", "backend": name, "mode": mode,
                             "threads": 1, **row})  # fmt: skip
                log(f"round {round_no + 1} bulk {name:9} {mode:10} p50 {row['p50_us']:6.0f} µs")
        for direct in directs:
            direct.close()
    return {"calibration": calibration, "rows": rows, "calibration_after": calibrate()}


def main() -> int:
    plan = json.load(sys.stdin)
    try:
        result = run(plan)
    except BenchError as exc:
        print(f"bench backends client: error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"bench backends client: call failed: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
