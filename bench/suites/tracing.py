"""`tracing` suite: what the tracing stage costs per call, in CPU microseconds.

Two measurements, each a median over rounds, the variants interleaved within each round so
that the machine's drift hits them alike:

- **stage**: the tracing stage's own work for one call, without sockets: a RequestInfo made,
  then ``begin`` (read the client's ``traceparent``, or start a trace; set the log context),
  ``outgoing`` (append the trace context to the ExecuteRequest bytes) and ``end``. Variants:
  no tracing (the baseline: RequestInfo only), ``tracing.enabled: false`` (log context only),
  W3C without and with a client ``traceparent``, and W3C + OpenTelemetry spans (a batch span
  processor over an exporter that drops them: the SDK's cost, not the network's). Reported
  as µs above the baseline.
- **proxy**: whole Execute calls (memstore ``get``, in-process) through a real proxy and a
  loopback socket, one after another, client and proxy in this one process: process CPU per
  call, tracing off, on, and on with OpenTelemetry spans. The difference is the stage's cost in
  a real call (the client's share is the same in every variant).

Runs in-process; needs the memstore plugin, and opentelemetry-sdk for the span variants
(`pip install -e '.[otel]'`; without it those rows say so).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import trio

from bench import report
from bench.suites import register
from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig
from prism.config.auth import AccessConfig
from prism.config.tracing import TracingConfig
from prism.grpc.interceptor import CallOutcome
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import Status
from prism.proxy.pipeline import NoTracing
from prism.proxy.request import RequestInfo
from prism.proxy.tracing import ExportingTracer, LogContextOnly, OtelSpans, W3CTracer
from prism.sdk.typed import pack

PACKAGES = ("trio", "opentelemetry-sdk")
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
CLIENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PLUGINS = {"kv": "memstore"}


def _discarding_spans() -> OtelSpans | None:
    try:
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return None

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return OtelSpans(None, processor=BatchSpanProcessor(Discard()))


def _stage_variants() -> dict[str, tuple[Any, list[tuple[str, str]]]]:
    headers = [("user-agent", "grpc-python/1.60"), ("te", "trailers")]
    variants: dict[str, tuple[Any, list[tuple[str, str]]]] = {
        "no tracing (baseline)": (NoTracing(), headers),
        "tracing.enabled: false (log context)": (LogContextOnly(PLUGINS), headers),
        "W3C, new trace": (W3CTracer(PLUGINS), headers),
        "W3C, client traceparent": (W3CTracer(PLUGINS), [*headers, ("traceparent", CLIENT)]),
    }
    spans = _discarding_spans()
    if spans is not None:
        variants["W3C + OpenTelemetry span"] = (
            ExportingTracer(PLUGINS, spans),
            [*headers, ("traceparent", CLIENT)],
        )
    return variants


def _stage_round(tracer: Any, headers: list[tuple[str, str]], calls: int) -> float:
    """CPU µs per call of one variant."""
    call = SimpleNamespace(metadata=headers, method=EXECUTE)
    peer = PeerInfo("127.0.0.1:5000", "tcp")
    request = bytes(ExecuteRequest(namespace="kv", operation="get", raw_params=b"k" * 16))
    outcome = CallOutcome(Status.OK, "", 0.0001)
    started = time.process_time_ns()
    for _ in range(calls):
        info = RequestInfo(peer, 0.0)
        tracer.begin(call, info)
        info.namespace, info.operation = "kv", "get"
        tracer.outgoing(info, request)
        tracer.end(info, outcome)
    return (time.process_time_ns() - started) / calls / 1000


def _proxy_config(tracing: TracingConfig) -> ProxyConfig:
    ns = NamespaceConfig(
        "kv", PluginConfig("memstore", mode="in_process"), access=AccessConfig(anonymous=True)
    )
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=AdminConfig(enabled=False, listen=None),
        tracing=tracing,
        namespaces=(ns,),
    )


async def _proxy_round(variant: str, calls: int) -> float:
    from prism.proxy.app import Proxy

    tracing = TracingConfig(enabled=variant != "off")
    proxy = Proxy(_proxy_config(tracing))
    if variant == "on + OpenTelemetry":
        spans = _discarding_spans()
        assert spans is not None
        proxy.pipeline.tracer = ExportingTracer(PLUGINS, spans)
    request = ExecuteRequest(namespace="kv", operation="get", typed_params=pack(GetRequest("k")))
    metadata = [("traceparent", CLIENT)]
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        assert proxy.address is not None
        async with pg.open_channel(f"{proxy.address[0]}:{proxy.address[1]}") as channel:
            for _ in range(calls // 10):  # warm-up
                await channel.unary_unary(EXECUTE, request, ExecuteResponse, metadata=metadata)
            started = time.process_time_ns()
            for _ in range(calls):
                await channel.unary_unary(EXECUTE, request, ExecuteResponse, metadata=metadata)
            spent = time.process_time_ns() - started
        nursery.cancel_scope.cancel()
    return spent / calls / 1000


def _medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in rounds.items()}


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}"


class TracingSuite:
    name = "tracing"
    summary = "CPU µs per call of the tracing stage: the stage alone, and whole proxy calls"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--calls", type=int, help="stage calls per round (default 50000, --quick 5000)"
        )
        parser.add_argument(
            "--proxy-calls",
            type=int,
            help="proxy calls per round and variant (default 5000, --quick 500)",
        )

    def run(self, args: argparse.Namespace) -> int:
        calls: int = args.calls or (5000 if args.quick else 50000)
        proxy_calls: int = args.proxy_calls or (500 if args.quick else 5000)
        repeat: int = args.repeat or (1 if args.quick else 5)
        variants = _stage_variants()
        stage: dict[str, list[float]] = {name: [] for name in variants}
        for tracer, headers in variants.values():  # warm-up
            _stage_round(tracer, headers, calls // 10)
        for _ in range(repeat):
            for name, (tracer, headers) in variants.items():
                stage[name].append(_stage_round(tracer, headers, calls))
        proxy_variants = ["off", "on"]
        if _discarding_spans() is not None:
            proxy_variants.append("on + OpenTelemetry")
        proxy: dict[str, list[float]] = {name: [] for name in proxy_variants}
        for _ in range(repeat):
            for name in proxy_variants:
                proxy[name].append(trio.run(_proxy_round, name, proxy_calls))

        stage_med, proxy_med = _medians(stage), _medians(proxy)
        base = stage_med["no tracing (baseline)"]
        stage_rows = [
            [name, f"{value:.2f}", f"{value - base:+.2f}", _spread(stage[name])]
            for name, value in stage_med.items()
        ]
        off = proxy_med["off"]
        proxy_rows = [
            [name, f"{value:.1f}", f"{value - off:+.1f}", _spread(proxy[name])]
            for name, value in proxy_med.items()
        ]
        markdown = "\n\n".join(
            [
                f"### tracing: the stage alone, {calls} calls per round, median of {repeat}",
                report.markdown_table(
                    ["variant", "µs per call", "above baseline", "min..max"], stage_rows
                ),
                f"### tracing: whole Execute calls (memstore get, in-process plugin, client in "
                f"the same process), {proxy_calls} sequential calls per round, median of {repeat}",
                report.markdown_table(
                    ["tracing", "CPU µs per call (client + proxy)", "above off", "min..max"],
                    proxy_rows,
                ),
            ]
        )
        print(markdown)
        data: dict[str, Any] = {
            "suite": self.name,
            "environment": report.environment(
                PACKAGES, {"calls": calls, "proxy_calls": proxy_calls, "repeat": repeat}
            ),
            "stage_us": stage_med,
            "proxy_us": proxy_med,
            "rounds": {"stage": stage, "proxy": proxy},
        }
        report.write_results(args.results_dir, f"tracing-{report.timestamp()}", data, markdown)
        return 0


register(TracingSuite())
