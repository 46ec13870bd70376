"""The ``prism.plugin.v1.BackendPlugin`` service: an in-memory key-value store on grpclib.

Everything here is plain asyncio + grpclib + betterproto2 messages generated into this
package's own ``_proto`` (from the core's protos): no Prism SDK. The behaviour follows the plugin
guide's contract so the proxy cannot tell this plugin from an SDK one:

- operations ``get``, ``set``, ``delete`` with ``prism.data.v1`` messages packed in ``Any``; the
  stream operation ``multi_get`` (every ``StreamRequest`` carries a ``GetRequest`` and gets a
  ``GetResponse``; a final ``StreamResponse(is_final=True)`` follows the client's half-close);
- errors are ``ExecuteResponse(success=False, error=..., error_code=<gRPC status>)``: unknown
  operation ``UNIMPLEMENTED``, bad params ``INVALID_ARGUMENT``, before ``Initialize``
  ``FAILED_PRECONDITION``, after ``Shutdown`` ``UNAVAILABLE``, a full store
  ``RESOURCE_EXHAUSTED``; ``InitializeResponse.error`` reads ``"<STATUS>: <message>"``;
- config: the proxy sends the namespace's YAML ``config`` as ``prism.config.v1.ConfigDocument``;
  the one field is ``max_keys`` (0 = unlimited); anything else is ``INVALID_ARGUMENT``;
- the reserved operation ``_prism.metrics`` returns interval ``PluginMetrics`` (reset on fetch).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import betterproto2
import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from prism_plugin_asyncio_kv._proto.google.protobuf import Any as ProtoAny
from prism_plugin_asyncio_kv._proto.message_pool import default_message_pool
from prism_plugin_asyncio_kv._proto.prism.config.v1 import ConfigDocument
from prism_plugin_asyncio_kv._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    SetRequest,
    SetResponse,
)
from prism_plugin_asyncio_kv._proto.prism.plugin.v1 import (
    BackendPluginBase,
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    InitializeRequest,
    InitializeResponse,
    PluginMetrics,
    ShutdownRequest,
    ShutdownResponse,
    StreamRequest,
    StreamResponse,
)

__all__ = ["VERSION", "KvService", "OperationError"]

log = logging.getLogger("prism_plugin_asyncio_kv")

VERSION = "0.1.0"
METRICS_OPERATION = "_prism.metrics"
UNARY_OPERATIONS = ("get", "set", "delete")
STREAM_OPERATIONS = ("multi_get",)
# Capabilities (operation:feature, see the plugin guide): set honours ttl_ms; no etags.
FEATURES = ("set:ttl",)
DEFAULT_GRACE_SECONDS = 5.0
_SHUTDOWN_METHOD = "/prism.plugin.v1.BackendPlugin/Shutdown"
_CONFIG_TYPE = "prism.config.v1.ConfigDocument"
_MAX_EXACT_INTEGER = 2**53  # a JSON/Struct number is a double

M = TypeVar("M", bound=betterproto2.Message)


class OperationError(Exception):
    """A failed operation, with the gRPC status it is reported under."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _no_etags(operation: str, field: str) -> OperationError:
    # A request field this plugin does not implement is refused, never silently ignored.
    return OperationError(
        Status.UNIMPLEMENTED,
        f"operation {operation!r} does not support {field} (no 'etag' feature)",
    )


class State(enum.Enum):
    NEW = "new"
    READY = "ready"
    CLOSED = "closed"


def _full_name(type_url: str) -> str:
    return type_url.rpartition("/")[2]


def _expected_name(cls: type[betterproto2.Message]) -> str:
    return _full_name(default_message_pool.type_to_url[cls])


def unpack_params(operation: str, typed: ProtoAny | None, raw: bytes | None, cls: type[M]) -> M:
    """The ``cls`` message a request carries, or INVALID_ARGUMENT saying what came instead."""
    expected = _expected_name(cls)
    if typed is None or not typed.type_url:
        got = "raw bytes" if raw is not None else "nothing"
        raise OperationError(
            Status.INVALID_ARGUMENT,
            f"operation {operation!r} params: expected {expected}, got {got}",
        )
    if _full_name(typed.type_url) != expected:
        raise OperationError(
            Status.INVALID_ARGUMENT,
            f"operation {operation!r} params: expected {expected}, got {typed.type_url}",
        )
    try:
        return cls.parse(typed.value)
    except Exception:
        raise OperationError(
            Status.INVALID_ARGUMENT,
            f"operation {operation!r} params: expected {expected}, got bytes that do not decode",
        ) from None


def parse_config(config: ProtoAny | None) -> int:
    """``max_keys`` from the Initialize config (a ConfigDocument); no config = defaults."""
    if config is None or not config.type_url:
        return 0
    if _full_name(config.type_url) != _CONFIG_TYPE:
        raise OperationError(
            Status.INVALID_ARGUMENT, f"config: expected {_CONFIG_TYPE}, got {config.type_url}"
        )
    try:
        document = ConfigDocument.parse(config.value)
    except Exception:
        raise OperationError(
            Status.INVALID_ARGUMENT, f"config: bytes that do not decode as {_CONFIG_TYPE}"
        ) from None
    max_keys = 0
    for key, value in (document.values.fields if document.values else {}).items():
        if key not in ("max_keys", "maxKeys"):
            raise OperationError(
                Status.INVALID_ARGUMENT, f"config field {key!r} is unknown (known: max_keys)"
            )
        number = value.number_value
        if number is None or not number.is_integer() or not 0 <= number <= _MAX_EXACT_INTEGER:
            # The value itself is not echoed: configs can hold things that should not be logged.
            raise OperationError(
                Status.INVALID_ARGUMENT, "config field 'max_keys' must be a non-negative integer"
            )
        max_keys = int(number)
    return max_keys


class _Interval:
    """Interval metrics, as the plugin protocol defines them: reset on every fetch."""

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.requests = self.failed = self.unary = self.hits = self.misses = 0
        self.latency_ms_total = 0.0

    def record(self, *, failed: bool, latency_ms: float | None) -> None:
        self.requests += 1
        self.failed += failed
        if latency_ms is not None:
            self.unary += 1
            self.latency_ms_total += latency_ms

    def report(self) -> PluginMetrics:
        return PluginMetrics(
            requests_total=self.requests,
            requests_failed=self.failed,
            latency_ms=self.latency_ms_total / self.unary if self.unary else 0.0,
            connections_active=0,
            cache_hits=self.hits,
            cache_misses=self.misses,
            interval_start_ns=self.start_ns,
        )


class KvService(BackendPluginBase):
    """One plugin instance. ``clock`` (monotonic seconds) decides TTL expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.state = State.NEW
        self.namespace = ""
        self.max_keys = 0
        self.grace_seconds = DEFAULT_GRACE_SECONDS
        self.shut_down = asyncio.Event()  # set once the Shutdown answer is on the wire
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._metrics = _Interval()

    # -- grpclib wiring ---------------------------------------------------------------------

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = super().__mapping__()
        # Our own Shutdown handler: it finishes the call (trailers included) before announcing
        # that the process may stop, so the proxy always gets its answer.
        mapping[_SHUTDOWN_METHOD] = mapping[_SHUTDOWN_METHOD]._replace(func=self._rpc_shutdown)
        return mapping

    async def _rpc_shutdown(
        self, stream: grpclib.server.Stream[ShutdownRequest, ShutdownResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(await self.shutdown(request))
        await stream.send_trailing_metadata()
        self.shut_down.set()

    # -- the five calls -----------------------------------------------------------------------

    async def initialize(self, message: InitializeRequest) -> InitializeResponse:
        if self.state is State.CLOSED:
            return InitializeResponse(success=False, error="UNAVAILABLE: the plugin was shut down")
        try:
            max_keys = parse_config(message.config)
        except OperationError as exc:
            return InitializeResponse(success=False, error=f"{exc.status.name}: {exc.message}")
        self.max_keys, self.namespace, self.state = max_keys, message.namespace, State.READY
        log.info("initialized for namespace %r (max_keys=%d)", self.namespace, self.max_keys)
        return InitializeResponse(
            success=True,
            plugin_version=VERSION,
            supported_operations=[*UNARY_OPERATIONS, *STREAM_OPERATIONS, *FEATURES],
        )

    async def health_check(self, message: HealthCheckRequest) -> HealthCheckResponse:
        if self.state is State.NEW:
            return HealthCheckResponse(
                status=HealthCheckResponseStatus.UNHEALTHY, message="not initialized"
            )
        if self.state is State.CLOSED:
            return HealthCheckResponse(
                status=HealthCheckResponseStatus.UNHEALTHY, message="shut down"
            )
        return HealthCheckResponse(
            status=HealthCheckResponseStatus.HEALTHY, details={"keys": str(len(self._data))}
        )

    async def execute(self, message: ExecuteRequest) -> ExecuteResponse:
        if message.operation == METRICS_OPERATION:  # answered in every state, never counted
            report, self._metrics = self._metrics.report(), _Interval()
            return ExecuteResponse(success=True, typed_result=ProtoAny.pack(report))
        started = time.perf_counter()
        try:
            result = self._execute(message)
        except OperationError as exc:
            response = ExecuteResponse(
                success=False, error=exc.message, error_code=exc.status.value
            )
        except Exception:
            # Its text may quote something secret: log the traceback, answer with a trace id.
            trace = uuid.uuid4().hex
            log.exception("operation %r failed (trace id %s)", message.operation, trace)
            response = ExecuteResponse(
                success=False,
                error=f"internal error in operation {message.operation!r} (trace id {trace})",
                error_code=Status.UNKNOWN.value,
            )
        else:
            response = ExecuteResponse(success=True, typed_result=ProtoAny.pack(result))
        latency_ms = (time.perf_counter() - started) * 1000
        self._metrics.record(failed=not response.success, latency_ms=latency_ms)
        return response

    async def execute_stream(
        self, messages: AsyncIterator[StreamRequest]
    ) -> AsyncIterator[StreamResponse]:
        first = await anext(messages, None)
        if first is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the stream ended before its first request")
        failed = True
        try:
            self._require_ready()
            if first.operation in UNARY_OPERATIONS:
                raise OperationError(
                    Status.UNIMPLEMENTED,
                    f"operation {first.operation!r} is not a stream operation: call Execute",
                )
            if first.operation != "multi_get":
                raise OperationError(
                    Status.UNIMPLEMENTED,
                    f"unknown stream operation {first.operation!r} "
                    f"(stream operations: {', '.join(STREAM_OPERATIONS)})",
                )
            request: StreamRequest | None = first
            while request is not None:
                self._require_ready()
                params = unpack_params(
                    "multi_get", request.typed_params, request.raw_params, GetRequest
                )
                yield StreamResponse(typed_result=ProtoAny.pack(self._get(params)))
                request = await anext(messages, None)
            yield StreamResponse(is_final=True)
            failed = False
        except OperationError as exc:
            raise GRPCError(exc.status, exc.message) from None
        except (asyncio.CancelledError, GeneratorExit):
            failed = False  # the caller went away: not the plugin's failure
            raise
        finally:
            self._metrics.record(failed=failed, latency_ms=None)

    async def shutdown(self, message: ShutdownRequest) -> ShutdownResponse:
        if message.grace_period_ms > 0:
            self.grace_seconds = message.grace_period_ms / 1000
        if self.state is not State.CLOSED:
            log.info("shutting down (%s)", message.reason or "no reason given")
            self.state = State.CLOSED
            self._data.clear()
        return ShutdownResponse(success=True)

    # -- operations ---------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if self.state is State.NEW:
            raise OperationError(Status.FAILED_PRECONDITION, "the plugin is not initialized")
        if self.state is State.CLOSED:
            raise OperationError(Status.UNAVAILABLE, "the plugin is shutting down")

    def _execute(self, request: ExecuteRequest) -> betterproto2.Message:
        self._require_ready()
        op, typed, raw = request.operation, request.typed_params, request.raw_params
        if op == "get":
            return self._get(unpack_params(op, typed, raw, GetRequest))
        if op == "set":
            return self._set(unpack_params(op, typed, raw, SetRequest))
        if op == "delete":
            return self._delete(unpack_params(op, typed, raw, DeleteRequest))
        if op in STREAM_OPERATIONS:
            raise OperationError(
                Status.UNIMPLEMENTED, f"operation {op!r} is a stream operation: call ExecuteStream"
            )
        raise OperationError(
            Status.UNIMPLEMENTED,
            f"unknown operation {op!r} (operations: {', '.join(UNARY_OPERATIONS)})",
        )

    def _live(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self.clock() >= expires:
            del self._data[key]
            return None
        return value

    @staticmethod
    def _check_key(key: str) -> None:
        if not key:
            raise OperationError(Status.INVALID_ARGUMENT, "key must not be empty")

    def _get(self, params: GetRequest) -> GetResponse:
        self._check_key(params.key)
        value = self._live(params.key)
        if value is None:
            self._metrics.misses += 1
            return GetResponse(found=False)
        self._metrics.hits += 1
        return GetResponse(found=True, value=value)

    def _set(self, params: SetRequest) -> SetResponse:
        self._check_key(params.key)
        if params.if_match or params.if_absent:
            raise _no_etags("set", "if_match/if_absent")
        if params.ttl_ms < 0:
            raise OperationError(Status.INVALID_ARGUMENT, "ttl_ms must not be negative")
        if self.max_keys and self._live(params.key) is None and self._count() >= self.max_keys:
            raise OperationError(
                Status.RESOURCE_EXHAUSTED, f"the store is full (max_keys = {self.max_keys})"
            )
        expires = self.clock() + params.ttl_ms / 1000 if params.ttl_ms else None
        self._data[params.key] = (params.value, expires)
        return SetResponse()

    def _delete(self, params: DeleteRequest) -> DeleteResponse:
        self._check_key(params.key)
        if params.if_match:
            raise _no_etags("delete", "if_match")
        deleted = self._live(params.key) is not None
        self._data.pop(params.key, None)
        return DeleteResponse(deleted=deleted)

    def _count(self) -> int:
        now = self.clock()
        expired = [k for k, (_, exp) in self._data.items() if exp is not None and now >= exp]
        for key in expired:
            del self._data[key]
        return len(self._data)
