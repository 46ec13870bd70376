"""The tracing stage: W3C trace context (https://www.w3.org/TR/trace-context/) on every call,
and, optionally, an OpenTelemetry span per call exported over OTLP.

Per DataProxy call (:class:`W3CTracer`, the pipeline's :class:`~prism.proxy.pipeline.Tracer`):

- ``begin``: the client's ``traceparent`` (and ``tracestate``) gRPC metadata, validated strictly
  (a malformed one, or two of them, is ignored and a new trace started, as the specification
  says); a new trace when there is none. The proxy's call is a span of its own: a new span id,
  whose parent is the client's. The result goes in ``RequestInfo.trace`` (the audit record
  reads it there) and the call's log records get its trace id (:mod:`prism.logsetup`).
- ``outgoing``: an Execute request, and an ExecuteStream's first request, reach the plugin
  with ``traceparent`` (the client's trace id, the proxy's span id) and ``tracestate`` in
  their ``metadata`` map (field 4 of both messages), appended to the request bytes (protobuf
  merges a map entry that comes later, and the last value of a key wins, so a client cannot
  pass a traceparent of its own making past the proxy).
- ``end``: the span, if OpenTelemetry is on, ends with the call's status.

With ``tracing.otlp_endpoint`` set, :class:`OtelSpans` (``pip install prism-proxy[otel]``)
records the spans with the OpenTelemetry SDK, on a tracer provider of the proxy's own (never
the process-global one), batched and exported by the SDK's own thread. Without it,
OpenTelemetry is never imported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from prism.grpc import traceid
from prism.grpc.interceptor import CallOutcome
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import Status
from prism.logsetup import LOG_CONTEXT
from prism.proxy.request import RequestInfo, TraceContext

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "CallLogContext",
    "ExportingTracer",
    "LogContextOnly",
    "OtelSpans",
    "W3CTracer",
    "format_traceparent",
    "parse_traceparent",
    "parse_tracestate",
]

log = logging.getLogger("prism.proxy.tracing")

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"

_KEY = re.compile(
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})\Z"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")
_MAX_MEMBERS = 32
_MAX_TRACESTATE = 8192  # what is read at all; members beyond 32 make it invalid anyway


#: ``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else None.
parse_traceparent = traceid.parse


def parse_tracestate(value: str) -> str:
    """``value`` when it is a valid ``tracestate`` (up to 32 ``key=value`` members, no key
    twice), else "" (it is dropped: never passed on half-checked)."""
    if len(value) > _MAX_TRACESTATE:
        return ""
    members = [m.strip(" \t") for m in value.split(",")]
    seen: set[str] = set()
    kept = []
    for member in members:
        if not member:
            continue  # empty members are allowed and skipped
        key, eq, val = member.partition("=")
        if not eq or not _KEY.match(key) or not _VALUE.match(val) or key in seen:
            return ""
        seen.add(key)
        kept.append(member)
    if len(kept) > _MAX_MEMBERS:
        return ""
    return ",".join(kept)


def format_traceparent(trace: TraceContext) -> str:
    """The ``traceparent`` the proxy sends on: its own span as the parent."""
    return f"00-{trace.trace_id}-{trace.span_id}-{trace.flags:02x}"


_new_trace_id, _new_span_id = traceid.new, traceid.new_span


def _client_context(call: ServerCall) -> tuple[str, str]:
    """The call's ``traceparent`` ("" when absent or given twice) and ``tracestate`` (its
    headers joined, as HTTP joins repeated headers)."""
    parent: str | None = None
    states: list[str] = []
    for key, value in call.metadata:
        if key == TRACEPARENT:
            parent = "" if parent is not None else value if isinstance(value, str) else ""
        elif key == TRACESTATE and isinstance(value, str):
            states.append(value)
    return parent or "", ",".join(states)


def _metadata_entry(key: bytes, value: str) -> bytes:
    """One ``map<string, string> metadata = 4`` entry, encoded."""
    raw = value.encode("ascii")
    entry = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(raw)) + raw
    return b"\x22" + _varint(len(entry)) + entry


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# A version-00 traceparent is always 55 characters: its map entry's bytes up to the value are
# always these.
_TRACEPARENT_ENTRY = _metadata_entry(b"traceparent", "x" * 55)[:-55]
#: Requests up to this size get the trace context joined on (one buffer); larger ones have it
#: sent behind them (:class:`~prism.grpc.wire.framing.Pieces`), so they are not copied.
_JOIN_LIMIT = 1 << 16


class CallLogContext:
    """What a call's log records carry (:data:`prism.logsetup.LOG_CONTEXT`): its namespace,
    plugin and trace id, read when a record is written (the namespace is known only once the
    front door has read the request)."""

    __slots__ = ("info", "plugins")

    def __init__(self, info: RequestInfo, plugins: Mapping[str, str]) -> None:
        self.info = info
        self.plugins = plugins

    def log_fields(self) -> Mapping[str, str]:
        info = self.info
        fields = {"namespace": info.namespace, "plugin": self.plugins.get(info.namespace, "")}
        if info.trace is not None:
            fields["trace_id"] = info.trace.trace_id
            fields["span_id"] = info.trace.span_id
        return fields


class LogContextOnly:
    """``tracing.enabled: false``: no trace context, but log records still name the call's
    namespace and plugin."""

    def __init__(self, plugins: Mapping[str, str]) -> None:
        self._plugins = plugins

    def begin(self, call: ServerCall, info: RequestInfo) -> None:
        LOG_CONTEXT.set(CallLogContext(info, self._plugins))

    def outgoing(self, info: RequestInfo, request: bytes) -> bytes:
        return request

    def end(self, info: RequestInfo, outcome: CallOutcome) -> None:
        pass


class W3CTracer:
    """The tracing stage (module docstring). ``plugins``: each namespace's plugin name, for
    log records; ``spans``: OpenTelemetry spans, or None."""

    def __init__(self, plugins: Mapping[str, str], spans: OtelSpans | None = None) -> None:
        self._plugins = plugins
        self.spans = spans
        # A trace the proxy starts is sampled when the proxy records spans: what it calls
        # may then record theirs under it.
        self._new_flags = 1 if spans is not None else 0

    def begin(self, call: ServerCall, info: RequestInfo) -> None:
        LOG_CONTEXT.set(CallLogContext(info, self._plugins))
        try:
            trace = info.trace = self._context(call, info)
        except Exception:  # must not raise: a broken exporter costs the span, not the call
            log.exception("cannot start the span of a call")
            trace = info.trace = TraceContext(
                _new_trace_id(), _new_span_id(), flags=self._new_flags
            )
        # The call's internal errors (prism.grpc's boundary) are reported under this id too.
        call.trace_id = trace.trace_id

    def _context(self, call: ServerCall, info: RequestInfo) -> TraceContext:
        header, state = _client_context(call)
        parsed = parse_traceparent(header) if header else None
        if parsed is None:
            # No valid parent: a new trace, and its tracestate (if any) is not to be trusted.
            if self.spans is not None:
                return self.spans.start(call, info, None, "")
            return TraceContext(_new_trace_id(), _new_span_id(), flags=self._new_flags)
        trace_id, parent_id, flags = parsed
        tracestate = parse_tracestate(state) if state else ""
        if self.spans is not None:
            return self.spans.start(call, info, parsed, tracestate)
        return TraceContext(trace_id, _new_span_id(), parent_id, flags, tracestate)

    def outgoing(self, info: RequestInfo, request: bytes) -> bytes | Pieces:
        trace = info.trace
        if trace is None:
            return request
        extra = _TRACEPARENT_ENTRY + format_traceparent(trace).encode()
        if trace.tracestate:
            extra += _metadata_entry(b"tracestate", trace.tracestate)
        if len(request) > _JOIN_LIMIT:
            # The entry is sent behind the request as it came, not joined to a copy of it.
            return Pieces(b"", request, extra)
        return request + extra

    def end(self, info: RequestInfo, outcome: CallOutcome) -> None:
        if self.spans is not None:
            try:
                self.spans.end(info, outcome)
            except Exception:  # must not raise: the call is over, its outcome stands
                log.exception("cannot end the span of a call (trace id %s)", _trace_id(info))


class ExportingTracer(W3CTracer):
    """A :class:`W3CTracer` with OpenTelemetry spans, and their exporter to flush when the
    proxy stops (the pipeline runs :meth:`run`)."""

    def __init__(self, plugins: Mapping[str, str], spans: OtelSpans) -> None:
        super().__init__(plugins, spans)
        self._spans = spans

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """See :meth:`OtelSpans.run`."""
        await self._spans.run(task_status=task_status)


def _trace_id(info: RequestInfo) -> str:
    return info.trace.trace_id if info.trace is not None else "-"


class OtelSpans:
    """One OpenTelemetry span per call, on a tracer provider of the proxy's own.

    ``processor`` is the span processor (default: a ``BatchSpanProcessor`` over an OTLP/HTTP
    exporter to ``endpoint``; tests pass one over the SDK's in-memory exporter). Imports
    OpenTelemetry when made: only when ``tracing.otlp_endpoint`` is set.
    """

    def __init__(
        self, endpoint: str | None, service_name: str = "prism", processor: Any = None
    ) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise RuntimeError(
                "tracing.otlp_endpoint needs OpenTelemetry: pip install prism-proxy[otel]"
            ) from exc
        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
        self._trace = trace
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("prism.proxy")
        self._open: dict[RequestInfo, Any] = {}

    def start(
        self,
        call: ServerCall,
        info: RequestInfo,
        parent: tuple[str, str, int] | None,
        tracestate: str,
    ) -> TraceContext:
        trace = self._trace
        context = None
        if parent is not None:
            trace_id, parent_id, flags = parent
            remote = trace.SpanContext(
                int(trace_id, 16),
                int(parent_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(flags),
                trace_state=trace.TraceState.from_header([tracestate]) if tracestate else None,
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        span = self._tracer.start_span(
            call.method.rpartition("/")[2] or call.method,
            context=context,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": call.method},
        )
        self._open[info] = span
        ctx = span.get_span_context()
        return TraceContext(
            f"{ctx.trace_id:032x}",
            f"{ctx.span_id:016x}",
            parent[1] if parent is not None else "",
            int(ctx.trace_flags),
            tracestate,
        )

    def end(self, info: RequestInfo, outcome: CallOutcome) -> None:
        span = self._open.pop(info, None)
        if span is None:
            return
        try:
            if info.namespace:
                span.set_attribute("prism.namespace", info.namespace)
            if info.operation:
                span.set_attribute("prism.operation", info.operation)
            span.set_attribute("rpc.grpc.status_code", int(outcome.status))
            if outcome.status != Status.OK:
                span.set_status(
                    self._trace.Status(self._trace.StatusCode.ERROR, outcome.status.name)
                )
        finally:
            span.end()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs until cancelled; then flushes what is left to the exporter (its own thread,
        at most 5 s) and shuts the provider down."""
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(5.0, shield=True):
                await trio.to_thread.run_sync(self.provider.shutdown, abandon_on_cancel=True)
