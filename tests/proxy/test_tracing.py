"""The tracing stage through a real proxy, socket and plugin (in-process and sidecar): what trace
context a plugin is given for what the client sent, and the OpenTelemetry spans."""

from __future__ import annotations

import http.server
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from host_testkit import EXECUTE, EXECUTE_STREAM, REPO, proxy_config, request
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from prism import grpc as pg
from prism._proto.prism.proxy.v1 import ExecuteResponse, StreamRequest, StreamResponse
from prism.config import NamespaceConfig, PluginConfig, ProxyConfig
from prism.config.audit import AuditConfig
from prism.config.auth import AccessConfig
from prism.config.tracing import TracingConfig
from prism.grpc.wire.status import Status
from prism.proxy.app import Proxy
from prism.proxy.tracing import (
    ExportingTracer,
    OtelSpans,
    W3CTracer,
    parse_traceparent,
    parse_tracestate,
)

HERE = Path(__file__).resolve().parent
PLUGIN = "trace_plugins:MetadataEcho"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def traced(mode: str = "in_process") -> NamespaceConfig:
    return NamespaceConfig(
        "trace",
        PluginConfig(PLUGIN, mode=mode, health_interval=3600),  # type: ignore[arg-type]
        access=AccessConfig(anonymous=True),
    )


@asynccontextmanager
async def serving(config: ProxyConfig, spans: OtelSpans | None = None) -> AsyncIterator[pg.Channel]:
    """A started proxy (with ``spans`` in its tracer, when given) and a channel to it."""
    async with trio.open_nursery() as nursery:
        proxy = Proxy(config)
        if spans is not None:
            proxy.pipeline.tracer = ExportingTracer({"trace": PLUGIN}, spans)
        await nursery.start(proxy.run)
        assert proxy.address is not None
        try:
            async with pg.open_channel(f"{proxy.address[0]}:{proxy.address[1]}") as channel:
                yield channel
        finally:
            nursery.cancel_scope.cancel()


async def plugin_metadata(
    channel: pg.Channel,
    headers: Sequence[tuple[str, str]] = (),
    body: dict[str, str] | None = None,
) -> dict[str, str]:
    """What the plugin was given in the request's metadata map."""
    with trio.fail_after(30):
        response: ExecuteResponse = await channel.unary_unary(
            EXECUTE, request("trace", "meta", b"hello", body), ExecuteResponse, metadata=headers
        )
    seen: dict[str, str] = json.loads(response.raw_result)
    return seen


async def stream_metadata(
    channel: pg.Channel,
    headers: Sequence[tuple[str, str]] = (),
    body: dict[str, str] | None = None,
) -> dict[str, str]:
    """What the plugin's stream operation was given in its metadata map."""
    first = StreamRequest(
        namespace="trace", operation="meta_stream", raw_params=b"hello", metadata=body or {}
    )
    with trio.fail_after(30):
        async with channel.stream(EXECUTE_STREAM, StreamResponse, metadata=headers) as stream:
            await stream.send_message(first)
            await stream.end()
            replies = [reply async for reply in stream]
    seen: dict[str, str] = json.loads(replies[0].raw_result)
    return seen


def parent_of(metadata: dict[str, str]) -> tuple[str, str, int]:
    parsed = parse_traceparent(metadata["traceparent"])
    assert parsed is not None, metadata
    return parsed


# -- the header rules --------------------------------------------------------------------------


def test_parse_traceparent_accepts_the_specification_example() -> None:
    assert parse_traceparent(CLIENT_PARENT) == (CLIENT_TRACE, CLIENT_SPAN, 1)
    # A later version may add fields; its first four are read.
    assert parse_traceparent(f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-00-what-next") == (
        CLIENT_TRACE,
        CLIENT_SPAN,
        0,
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        CLIENT_PARENT.upper(),  # hex is lower-case only
        f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # all-zero trace id
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01",  # short trace id
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-1",  # one-digit flags
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01 ",  # trailing space
        f"00_{CLIENT_TRACE}_{CLIENT_SPAN}_01",
        f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01x",  # a later version still separates with "-"
    ],
)
def test_parse_traceparent_refuses_malformed(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
        ("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("tenant@vendor=v,,a=b", "tenant@vendor=v,a=b"),  # empty members are skipped
        ("a=b,a=c", ""),  # a key twice
        ("Upper=x", ""),  # keys are lower-case
        ("a=b=c", ""),  # "=" in a value
        ("novalue", ""),
        (",".join(f"k{i}=v" for i in range(33)), ""),  # more than 32 members
        ("a=" + "x" * 257, ""),  # a value over 256 characters
    ],
)
def test_parse_tracestate_keeps_only_valid(value: str, kept: str) -> None:
    assert parse_tracestate(value) == kept


# -- through the proxy -----------------------------------------------------------------------


async def test_tracer_passes_the_clients_trace_to_the_plugin_with_a_new_span() -> None:
    async with serving(proxy_config(traced())) as channel:
        seen = await plugin_metadata(
            channel, [("traceparent", CLIENT_PARENT), ("tracestate", "congo=t61rcWkgMzE")]
        )
    trace_id, span_id, flags = parent_of(seen)
    assert trace_id == CLIENT_TRACE
    assert span_id != CLIENT_SPAN  # the proxy's own span is the plugin's parent
    assert flags == 1
    assert seen["tracestate"] == "congo=t61rcWkgMzE"


async def test_tracer_passes_the_trace_to_a_sidecar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    async with serving(proxy_config(traced("sidecar"))) as channel:
        seen = await plugin_metadata(channel, [("traceparent", CLIENT_PARENT)])
    trace_id, span_id, _ = parent_of(seen)
    assert (trace_id, span_id != CLIENT_SPAN) == (CLIENT_TRACE, True)
    assert "tracestate" not in seen


async def test_tracer_starts_a_trace_for_each_call_without_one() -> None:
    async with serving(proxy_config(traced())) as channel:
        first = parent_of(await plugin_metadata(channel))
        second = parent_of(await plugin_metadata(channel))
    assert first[0] != second[0]  # two calls, two traces
    assert first[2] == 0  # not sampled: nothing records spans


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", CLIENT_PARENT.upper()), ("tracestate", "congo=t61rcWkgMzE")],
        [("traceparent", f"00-{'0' * 32}-{CLIENT_SPAN}-01")],
        [("traceparent", CLIENT_PARENT), ("traceparent", CLIENT_PARENT)],  # given twice
    ],
)
async def test_tracer_ignores_an_invalid_traceparent(headers: list[tuple[str, str]]) -> None:
    async with serving(proxy_config(traced())) as channel:
        seen = await plugin_metadata(channel, headers)
    trace_id, _, _ = parent_of(seen)
    assert trace_id not in (CLIENT_TRACE, "0" * 32)
    assert "tracestate" not in seen  # an invalid traceparent's tracestate is not passed on


async def test_tracer_replaces_a_traceparent_the_client_put_in_the_request() -> None:
    body = {"traceparent": "00-forged", "user": "u1"}
    async with serving(proxy_config(traced())) as channel:
        seen = await plugin_metadata(channel, [("traceparent", CLIENT_PARENT)], body)
    assert parent_of(seen)[0] == CLIENT_TRACE
    assert seen["user"] == "u1"  # the client's own metadata is passed on as it was


async def test_tracer_disabled_passes_no_trace_context() -> None:
    config = proxy_config(traced(), tracing=TracingConfig(enabled=False))
    async with serving(config) as channel:
        seen = await plugin_metadata(channel, [("traceparent", CLIENT_PARENT)], {"user": "u1"})
    assert seen == {"user": "u1"}


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_tracer_passes_the_clients_trace_to_a_stream(
    mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    audit = tmp_path / "audit.jsonl"
    config = proxy_config(traced(mode), audit=AuditConfig(enabled=True, file=audit))
    async with serving(config) as channel:
        seen = await stream_metadata(
            channel,
            [("traceparent", CLIENT_PARENT), ("tracestate", "congo=t61rcWkgMzE")],
            {"traceparent": "00-forged", "user": "u1"},
        )
        started = await stream_metadata(channel)
    trace_id, span_id, flags = parent_of(seen)
    assert (trace_id, flags) == (CLIENT_TRACE, 1)
    assert span_id != CLIENT_SPAN  # the proxy's own span is the plugin's parent
    assert (seen["tracestate"], seen["user"]) == ("congo=t61rcWkgMzE", "u1")
    new_trace = parent_of(started)[0]  # no traceparent: the proxy started a trace
    assert new_trace not in (CLIENT_TRACE, "0" * 32)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["operation"], r["stream"], r["trace_id"]) for r in records] == [
        ("meta_stream", True, CLIENT_TRACE),
        ("meta_stream", True, new_trace),
    ]


class BuggyStage:
    """A rate limiter with a bug: the proxy's own code failing, not a plugin's."""

    def check(self, info: object) -> None:
        raise ZeroDivisionError("a bug in the proxy")


class BuggyAuthenticator:
    """An authenticator with a bug: it fails in the server interceptor, before the handler."""

    async def authenticate(self, call: object, info: object) -> None:
        raise ZeroDivisionError("a bug in authentication")


@pytest.mark.parametrize("where", ["proxy", "authenticator", "in_process", "sidecar"])
@pytest.mark.parametrize("sent", [True, False], ids=["traceparent", "no-traceparent"])
async def test_tracer_internal_error_is_reported_under_the_calls_trace_id(
    where: str,
    sent: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    audit = tmp_path / "audit.jsonl"
    mode = where if where in ("in_process", "sidecar") else "in_process"
    config = proxy_config(traced(mode), audit=AuditConfig(enabled=True, file=audit))
    headers = [("traceparent", CLIENT_PARENT)] if sent else []
    async with trio.open_nursery() as nursery:
        proxy = Proxy(config)
        await nursery.start(proxy.run)
        if where == "proxy":
            proxy.pipeline.namespaces["trace"].rate_limiter = BuggyStage()
        elif where == "authenticator":
            proxy.pipeline.authenticator = BuggyAuthenticator()  # type: ignore[assignment]
        assert proxy.address is not None
        async with pg.open_channel(f"{proxy.address[0]}:{proxy.address[1]}") as channel:
            with trio.fail_after(30), pytest.raises(pg.GrpcError) as failed:
                await channel.unary_unary(
                    EXECUTE, request("trace", "crash", b""), ExecuteResponse, metadata=headers
                )
        nursery.cancel_scope.cancel()
    [record] = [json.loads(line) for line in audit.read_text().splitlines()]
    trace_id = record["trace_id"]
    if sent:
        assert trace_id == CLIENT_TRACE
    assert failed.value.status == Status.UNKNOWN
    assert failed.value.message.endswith(f"(trace id {trace_id})")
    assert "bug" not in failed.value.message  # what went wrong is in the log only
    if where != "sidecar":  # a sidecar's lines reach the proxy's log through its stderr
        [line] = [r for r in caplog.records if f"trace id {trace_id}" in r.getMessage()]
        assert line.levelno == logging.ERROR
        if where in ("proxy", "authenticator"):  # the proxy's own record carries the field
            assert line.__dict__["trace_id"] == trace_id


# -- OpenTelemetry spans ------------------------------------------------------------------------


async def test_otel_spans_one_per_call_under_the_clients_trace() -> None:
    exporter = InMemorySpanExporter()
    spans = OtelSpans(None, processor=SimpleSpanProcessor(exporter))
    async with serving(proxy_config(traced()), spans) as channel:
        seen = await plugin_metadata(channel, [("traceparent", CLIENT_PARENT)])
        new = await plugin_metadata(channel)
    finished = exporter.get_finished_spans()
    assert len(finished) == 2
    span = finished[0]
    ctx = span.get_span_context()
    assert f"{ctx.trace_id:032x}" == CLIENT_TRACE
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    # The plugin's parent is the proxy's span: the trace is one tree.
    assert parent_of(seen)[1] == f"{ctx.span_id:016x}"
    attributes: dict[str, Any] = dict(span.attributes or {})
    assert attributes["prism.namespace"] == "trace"
    assert attributes["prism.operation"] == "meta"
    assert attributes["rpc.grpc.status_code"] == 0
    assert span.resource.attributes["service.name"] == "prism"
    # A call without a trace starts one, sampled: the proxy records it.
    assert finished[1].parent is None
    assert parent_of(new)[0] == f"{finished[1].get_span_context().trace_id:032x}"
    assert parent_of(new)[2] & 1  # sampled (OpenTelemetry also sets level 2's random bit)


async def test_otel_spans_record_the_failure_status() -> None:
    exporter = InMemorySpanExporter()
    spans = OtelSpans(None, processor=SimpleSpanProcessor(exporter))
    async with serving(proxy_config(traced()), spans) as channel:
        with pytest.raises(pg.GrpcError) as caught:
            await channel.unary_unary(EXECUTE, request("trace", "nope", b""), ExecuteResponse)
    assert caught.value.status == pg.Status.UNIMPLEMENTED
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["rpc.grpc.status_code"] == int(pg.Status.UNIMPLEMENTED)
    assert not span.status.is_ok


def test_tracer_without_an_otlp_endpoint_never_imports_opentelemetry() -> None:
    script = (
        "import sys\n"
        "from prism.config import ProxyConfig\n"
        "from prism.proxy.assembly import tracer\n"
        "stage = tracer(ProxyConfig())\n"
        "print(type(stage).__name__, any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert out.split() == [W3CTracer.__name__, "False"]


class Collector:
    """An OTLP/HTTP traces endpoint on a real socket: what the proxy's exporter posts."""

    def __init__(self) -> None:
        received: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        found = []
        for body in self.received:
            export = ExportTraceServiceRequest.FromString(body)
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    found.extend((resource.resource, span) for span in scope.spans)
        return found


async def test_otel_spans_are_exported_over_otlp_when_configured() -> None:
    collector = Collector()
    try:
        tracing = TracingConfig(otlp_endpoint=collector.url, service_name="prism-test")
        async with serving(proxy_config(traced(), tracing=tracing)) as channel:
            seen = await plugin_metadata(channel, [("traceparent", CLIENT_PARENT)])
        # Stopping the proxy flushed the batch to the collector.
        ((resource, span),) = collector.spans()
    finally:
        collector.server.shutdown()
    assert span.trace_id.hex() == CLIENT_TRACE
    assert span.parent_span_id.hex() == CLIENT_SPAN
    assert parent_of(seen)[1] == span.span_id.hex()
    assert span.name == "Execute"
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert attributes["service.name"] == "prism-test"
