"""The `plugins` suite's load client: sequential, closed-loop `Execute` calls, timed one by one.

Run as `python -m bench.plugin_client` with a JSON plan on stdin (see `Plan`); it prints its
measurements as one JSON document on stdout and progress on stderr. It is its own process so
that the runner's work (and its garbage) stays out of the timings.

The client is grpcio's synchronous stub on one channel, with raw `bytes` in and out (requests
are serialized once, up front). Of the clients at hand it has the lowest and the steadiest cost
per call: grpcio's C core does HTTP/2, and what is left in Python is one function call. Its
latency is part of every figure, and cancels out of the added latency of sidecar and remote
over in-process; its CPU time is reported next to the servers'.

The functions building requests and checking a namespace are shared with the runner.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from bench.errors import BenchError
from bench.procs import ROOT, Sched, read_sched, read_system_busy_seconds
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.sdk.typed import pack, unpack

METHOD = "/prism.proxy.v1.DataProxy/Execute"
OPS = ("set", "get")
#: Calls cycle through this many keys (all the same length, so every response has one size).
KEYS = 64
#: grpcio channel options: no retry machinery (it buffers every call for a possible retry).
CHANNEL_OPTIONS = [("grpc.enable_retries", 0)]

Call = Callable[[bytes], bytes]


def key(i: int) -> str:
    return f"bench-{i:04d}"


def value(size: int) -> bytes:
    pattern = bytes(range(256))
    return (pattern * (size // len(pattern) + 1))[:size]


def requests(namespace: str, op: str, value_size: int) -> list[bytes]:
    """Serialized ExecuteRequests for `op` ("set" or "get") on KEYS keys."""
    out = []
    for i in range(KEYS):
        params = (
            SetRequest(key=key(i), value=value(value_size))
            if op == "set"
            else GetRequest(key=key(i))
        )
        out.append(
            bytes(ExecuteRequest(namespace=namespace, operation=op, typed_params=pack(params)))
        )
    return out


def execute_call(channel: grpc.Channel) -> Call:
    call: Call = channel.unary_unary(METHOD)
    return call


def check_namespace(call: Call, namespace: str, value_size: int) -> dict[str, int]:
    """Set and get every key through `namespace`, check the values; the (fixed) size of each
    op's serialized response, for checking responses cheaply under load."""
    sizes: dict[str, set[int]] = {op: set() for op in OPS}
    for op in OPS:
        for request in requests(namespace, op, value_size):
            try:
                response = call(request)
            except grpc.RpcError as exc:
                raise BenchError(f"{namespace}: {op} failed: {exc}") from exc
            sizes[op].add(len(response))
            if op == "get":
                got = unpack(ExecuteResponse.parse(response).typed_result, GetResponse)
                if not got.found or got.value != value(value_size):
                    raise BenchError(f"{namespace}: get returned {got!r}, not the value set")
    if any(len(s) != 1 for s in sizes.values()):
        raise BenchError(f"{namespace}: responses of one op differ in size: {sizes}")
    return {op: s.pop() for op, s in sizes.items()}


@dataclass(frozen=True)
class Target:
    namespace: str
    proxy_pid: int
    #: The plugin's own process (sidecar or remote), None when it runs in the proxy.
    plugin_pid: int | None
    #: Which proxy: "" for the tree under test, "baseline" for `--baseline DIR`'s.
    tree: str = ""
    #: That proxy's address (the plan's by default).
    address: str = ""


@dataclass(frozen=True)
class Plan:
    address: str
    targets: list[Target]
    rounds: int
    calls: int
    warmup: int
    value_size: int
    #: Run `python -m bench.calibration --quick` at the start of every round.
    calibrate: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**{**data, "targets": [Target(**t) for t in data["targets"]]})


@dataclass
class Batch:
    """`calls` sequential calls of one op on one namespace, in one round."""

    round: int
    tree: str
    namespace: str
    op: str
    calls: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    wall_s: float
    proxy_cpu_s: float
    plugin_cpu_s: float | None
    client_cpu_s: float
    #: CPU seconds everything else on the machine used meanwhile (noise).
    other_cpu_s: float
    #: Seconds runnable but waiting for a CPU (the run queue), and context switches (blocked,
    #: preempted), of the proxy, the plugin process and this client, over the batch.
    proxy_wait_s: float
    plugin_wait_s: float | None
    client_wait_s: float
    proxy_switches: tuple[int, int]
    plugin_switches: tuple[int, int] | None
    client_switches: tuple[int, int]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of ascending values."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def calibrate() -> dict[str, Any]:
    """A quick same-run calibration (bench.calibration) in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.calibration", "--quick"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def timed_calls(call: Call, reqs: list[bytes], n: int, response_size: int) -> list[int]:
    """Latencies in ns of `n` calls cycling through `reqs`; BenchError on a wrong response."""
    latencies = [0] * n
    count = len(reqs)
    clock = time.perf_counter_ns
    wrong = 0
    for i in range(n):
        request = reqs[i % count]
        start = clock()
        response = call(request)
        latencies[i] = clock() - start
        if len(response) != response_size:
            wrong += 1
    if wrong:
        raise BenchError(f"{wrong} of {n} responses did not have the expected size")
    return latencies


def log(message: str) -> None:
    print(f"[bench plugins client] {message}", file=sys.stderr, flush=True)


def run(plan: Plan) -> dict[str, Any]:
    batches: list[Batch] = []
    calibrations: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str, str], list[int]] = {}
    addresses = sorted({t.address or plan.address for t in plan.targets})
    channels = {a: grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses}
    try:
        calls = {a: execute_call(c) for a, c in channels.items()}
        reqs = {
            (t.namespace, op): requests(t.namespace, op, plan.value_size)
            for t in plan.targets
            for op in OPS
        }
        sizes = {
            (t.tree, t.namespace): check_namespace(
                calls[t.address or plan.address], t.namespace, plan.value_size
            )
            for t in plan.targets
        }
        for t in plan.targets:
            for op in OPS:
                timed_calls(
                    calls[t.address or plan.address],
                    reqs[t.namespace, op],
                    plan.warmup,
                    sizes[t.tree, t.namespace][op],
                )
        log(f"checked and warmed up ({plan.warmup} calls per namespace and op)")
        me = os.getpid()
        for round_no in range(plan.rounds):
            if plan.calibrate:
                calibrations.append({"round": round_no, **calibrate()})
            shift = round_no % len(plan.targets)
            for t in plan.targets[shift:] + plan.targets[:shift]:
                call = calls[t.address or plan.address]
                for op in OPS:
                    gc.collect()
                    gc.disable()
                    try:
                        busy0, own0 = read_system_busy_seconds(), read_sched(me)
                        proxy0 = read_sched(t.proxy_pid)
                        plugin0 = read_sched(t.plugin_pid) if t.plugin_pid else Sched()
                        wall0 = time.perf_counter()
                        lat = timed_calls(
                            call, reqs[t.namespace, op], plan.calls, sizes[t.tree, t.namespace][op]
                        )
                        wall = time.perf_counter() - wall0
                        proxy = read_sched(t.proxy_pid) - proxy0
                        plugin = read_sched(t.plugin_pid) - plugin0 if t.plugin_pid else None
                        own = read_sched(me) - own0
                        busy = read_system_busy_seconds() - busy0
                    finally:
                        gc.enable()
                    pooled.setdefault((t.tree, t.namespace, op), []).extend(lat)
                    lat.sort()
                    plugin_cpu = plugin.cpu_ns / 1e9 if plugin else None
                    batch = Batch(
                        round=round_no,
                        tree=t.tree,
                        namespace=t.namespace,
                        op=op,
                        calls=plan.calls,
                        p50_us=percentile(lat, 0.50) / 1e3,
                        p90_us=percentile(lat, 0.90) / 1e3,
                        p99_us=percentile(lat, 0.99) / 1e3,
                        max_us=lat[-1] / 1e3,
                        mean_us=sum(lat) / len(lat) / 1e3,
                        wall_s=wall,
                        proxy_cpu_s=proxy.cpu_ns / 1e9,
                        plugin_cpu_s=plugin_cpu,
                        client_cpu_s=own.cpu_ns / 1e9,
                        other_cpu_s=max(
                            0.0, busy - (proxy.cpu_ns + own.cpu_ns) / 1e9 - (plugin_cpu or 0.0)
                        ),
                        proxy_wait_s=proxy.wait_ns / 1e9,
                        plugin_wait_s=plugin.wait_ns / 1e9 if plugin else None,
                        client_wait_s=own.wait_ns / 1e9,
                        proxy_switches=(proxy.voluntary, proxy.involuntary),
                        plugin_switches=(plugin.voluntary, plugin.involuntary) if plugin else None,
                        client_switches=(own.voluntary, own.involuntary),
                    )
                    batches.append(batch)
                    per_call = 1e6 / plan.calls
                    log(
                        f"round {round_no + 1}/{plan.rounds} {t.tree + '/' if t.tree else ''}"
                        f"{t.namespace:8} {op} p50 {batch.p50_us:7.0f} µs  "
                        f"p99 {batch.p99_us:7.0f} µs  "
                        f"proxy CPU {batch.proxy_cpu_s * per_call:5.0f} µs/call"
                        + (f"  plugin CPU {plugin_cpu * per_call:5.0f}" if plugin_cpu else "")
                        + f"  other load {batch.other_cpu_s / wall:4.0%}"
                    )
    finally:
        for channel in channels.values():
            channel.close()
    pooled_pct = {}
    for (tree, namespace, op), lat in pooled.items():
        lat.sort()
        pooled_pct[f"{tree + '/' if tree else ''}{namespace}/{op}"] = {
            "calls": len(lat),
            "p50_us": percentile(lat, 0.50) / 1e3,
            "p99_us": percentile(lat, 0.99) / 1e3,
        }
    return {
        "response_sizes": {f"{tree}/{ns}".lstrip("/"): v for (tree, ns), v in sizes.items()},
        "batches": [asdict(b) for b in batches],
        "pooled": pooled_pct,
        "calibration": calibrations,
    }


def main() -> int:
    plan = Plan.from_json(json.load(sys.stdin))
    try:
        result = run(plan)
    except BenchError as exc:
        print(f"bench plugins client: error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"bench plugins client: call failed: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
