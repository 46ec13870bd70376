"""The `proxy` suite's stages without the gRPC stack: CPU µs per call, case by case.

`python -m bench.stage_path [--calls N] [--rounds R] [--cases a,b]` prints one JSON document:
for each case of the `proxy` suite (:data:`bench.suites.proxy.CASES`, the same configs), the
median (and min) over rounds of the CPU time per call of what the proxy does for an `Execute`
`get` once prism.grpc has handed it the call: the call-level stages before the handler
(``CallStages.before``: RequestInfo, trace context, authentication), the handler
(``Pipeline.unary``: target, authorization, rate limit, concurrency limit, route, breaker, the
in-process memstore plugin) and the stages after it (``CallStages.after``: metrics, audit,
trace). The pipeline is the one ``prism serve`` builds (``assembly.build_pipeline``) from the
case's config, running (its audit writer too); the plugin is a real memstore instance. The
"route" case is the handler alone, as the front door runs it without ``CallStages``.

What stands in for prism.grpc's ``ServerCall`` is the few attributes the stages read (method,
peer, metadata, state, deadline; no cancel scope). No socket, no HTTP/2, no HPACK: the cost
of each stage steadier than h2load's figures on a busy machine (the cases are interleaved in
every round), and what the suite's stage table is read beside.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.plugin.v1 import InitializeRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest
from prism.config.load import parse_config
from prism.grpc.interceptor import CallOutcome
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import Status
from prism.proxy.assembly import build_pipeline
from prism.proxy.metrics import ProxyMetrics
from prism.proxy.pipeline import Pipeline
from prism.sdk.instance import PluginInstance, open_plugin
from prism.sdk.typed import pack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
SCOPE = trio.CancelScope()


class Call:
    """What the stages read of a prism.grpc ServerCall."""

    __slots__ = ("deadline", "metadata", "method", "peer", "scope", "state", "trace_id")

    def __init__(self, peer: PeerInfo, metadata: list[tuple[str, str]]) -> None:
        self.method = EXECUTE
        self.peer = peer
        self.metadata = metadata
        self.state: dict[Any, Any] = {}
        self.deadline = math.inf
        # Not None: the handler gives the plugin its caller's cancel (CALLER_CANCEL), as the
        # front door does, instead of the engine opening a cancel scope per call.
        self.scope = SCOPE
        self.trace_id = ""  # the tracing stage sets it (ServerCall makes one lazily)

    def cancel(self) -> None:
        pass


class Route:
    def __init__(self, instance: PluginInstance) -> None:
        self.current = instance
        self.execute = instance.execute_encoded


class Router:
    def __init__(self, instance: PluginInstance) -> None:
        self._route = Route(instance)

    def route(self, namespace: str) -> Route:
        return self._route


def get_request(namespace: str) -> bytes:
    """An Execute ``get`` of the key :func:`seed` set, as bytes."""
    get = ExecuteRequest(namespace=namespace, operation="get")
    get.typed_params = pack(GetRequest(key="bench-0001"))
    return bytes(get)


async def seed(instance: PluginInstance, namespace: str) -> None:
    """Initialize a memstore instance for ``namespace`` and set the key the calls get."""
    answer = await instance.initialize(InitializeRequest(namespace=namespace))
    if not answer.success:
        raise SystemExit(f"memstore did not initialize: {answer.error}")
    set_request = ExecuteRequest(namespace=namespace, operation="set")
    set_request.typed_params = pack(SetRequest(key="bench-0001", value=bytes(100)))
    await instance.execute_encoded(bytes(set_request))


async def measure(names: list[str], calls: int, rounds: int) -> dict[str, Any]:
    from prism_plugin_memstore.plugin import MemstorePlugin

    from bench.suites.proxy import CASES, NAMESPACE, proxy_config

    peer = PeerInfo("127.0.0.1:40000", "tcp")
    request = get_request(NAMESPACE)
    with tempfile.TemporaryDirectory(prefix="prism-stages-") as tmp_name:
        tmp = Path(tmp_name)
        async with open_plugin(MemstorePlugin()) as instance, trio.open_nursery() as nursery:
            await seed(instance, NAMESPACE)
            pipelines: dict[str, tuple[Pipeline, list[tuple[str, str]], bool]] = {}
            for name in names:
                case = CASES[name]
                setup = case.setup(tmp)
                runtime = tmp / f"{name}-run"
                runtime.mkdir()
                config = parse_config(proxy_config(0, setup, runtime), tmp)
                pipeline = build_pipeline(config, Router(instance), ProxyMetrics())
                await nursery.start(pipeline.run)
                metadata = [tuple(h.split(": ", 1)) for h in setup.headers]
                pipelines[name] = (pipeline, metadata, case.call_stages)  # type: ignore[assignment]

            async def one(
                pipeline: Pipeline, metadata: list[tuple[str, str]], stages: bool
            ) -> None:
                call = Call(peer, metadata)
                started = trio.current_time()
                if stages:
                    await pipeline.interceptor.before(call)  # type: ignore[arg-type]
                await pipeline.unary(call, request)  # type: ignore[arg-type]
                if stages:
                    outcome = CallOutcome(Status.OK, "", trio.current_time() - started)
                    pipeline.interceptor.after(call, outcome)  # type: ignore[arg-type]

            per_call: dict[str, list[float]] = {name: [] for name in names}
            for pipeline, metadata, stages in pipelines.values():  # warm up
                for _ in range(max(calls // 10, 1)):
                    await one(pipeline, metadata, stages)
            for round_no in range(rounds):
                shift = round_no % len(names)
                for name in names[shift:] + names[:shift]:
                    pipeline, metadata, stages = pipelines[name]
                    started = time.process_time()
                    for _ in range(calls):
                        await one(pipeline, metadata, stages)
                    per_call[name].append((time.process_time() - started) / calls * 1e6)
                    await trio.lowlevel.checkpoint()  # the audit writer gets its turn
            nursery.cancel_scope.cancel()
    return {
        "calls": calls,
        "cases": {
            name: {
                "us_per_call": statistics.median(values),
                "us_per_call_min": min(values),
                "rounds": values,
            }
            for name, values in per_call.items()
        },
    }


def main() -> int:
    from bench.suites.proxy import CASES

    parser = argparse.ArgumentParser(prog="python -m bench.stage_path", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", help=f"comma-separated, from: {', '.join(CASES)}")
    args = parser.parse_args()
    names = [n for n in (args.cases or ",".join(CASES)).split(",") if n]
    json.dump(trio.run(measure, names, args.calls, args.rounds), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
