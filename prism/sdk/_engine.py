"""The typed core of a plugin instance: lifecycle, admission, error mapping, metrics.

``PluginInstance`` (``prism.sdk.instance``) adds the RFC's message-level calls on top; hosts use
that class. This one holds what both paths share: the state machine (NEW → INITIALIZING →
READY → CLOSING → CLOSED), the in-flight operations a shutdown drains, and the single place
where plugin code runs (``_guard``): status errors pass with credentials scrubbed, any other
exception becomes a logged ``Unknown``.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

import betterproto2
import trio

from prism._proto.prism.plugin.v1 import OperationDescription, PluginDescription, PluginMetrics
from prism.grpc.wire.status import (
    FailedPrecondition,
    GrpcError,
    InvalidArgument,
    Unavailable,
    Unimplemented,
)
from prism.logsetup import LOG_CONTEXT, TraceparentFields
from prism.sdk import _codec
from prism.sdk._nursery import open_nursery_unwrapped
from prism.sdk.config import InvalidConfig
from prism.sdk.errors import Redactor, report_unexpected
from prism.sdk.plugin import (
    BackendPlugin,
    Credentials,
    HealthReport,
    HealthStatus,
    OperationContext,
    OperationSpec,
    OperationStream,
    Payload,
)
from prism.sdk.shared import SharedResult
from prism.sdk.typed import type_name, type_url

__all__ = ["CALLER_CANCEL", "Engine", "Outbound", "Receive", "Send", "State"]

T = TypeVar("T")
Send = Callable[[Payload], Awaitable[None]]
#: What a stream's results go to: checked results, shared or not.
Outbound = Callable[[Payload | SharedResult], Awaitable[None]]
Receive = Callable[[], Awaitable[Payload | None]]


#: The share of a shutdown's grace that in-flight operations get before they are cancelled; the
#: plugin's ``shutdown`` hook gets the rest.
DRAIN_SHARE = 0.5
#: For cancelled operations and tasks to unwind (they end at their next checkpoint).
_UNWIND_GRACE = 0.05

#: How to cancel the unary operation the current task is about to run, set by a host whose
#: caller's cancel scope ends where the operation does (the proxy's front door sets its call's
#: ``cancel``, and resets it after the call): the engine then cancels the operation through it
#: when a shutdown's drain is over, instead of opening a cancel scope of its own per operation
#: (a CancelScope costs several µs, a noticeable share of an in-process call). The call ends
#: UNAVAILABLE either way. Unset (None): the engine opens its own scope.
CALLER_CANCEL: ContextVar[Callable[[], None] | None] = ContextVar(
    "prism.sdk.caller_cancel", default=None
)


class State(enum.Enum):
    NEW = "new"
    INITIALIZING = "initializing"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class Engine:
    """A ``BackendPlugin`` object in its instance scope, driven with typed payloads."""

    def __init__(
        self, plugin: BackendPlugin, nursery: trio.Nursery, tasks_done: trio.Event | None = None
    ) -> None:
        """``nursery`` holds the plugin's tasks (``open_plugin`` makes one); ``tasks_done`` is
        set once they have all ended, so shutdown can wait for them."""
        if not plugin.name:
            raise TypeError(f"{type(plugin).__qualname__} must set the class attribute `name`")
        self.plugin = plugin
        self.namespace = ""
        self._nursery = nursery
        self._tasks_done = tasks_done
        self._state = State.NEW
        self._redact = Redactor()
        #: How to cancel each operation in flight (its scope's ``cancel``, or its caller's).
        self._inflight: set[Callable[[], None]] = set()
        #: Set once no operation is in flight; made only when a shutdown waits for that, so
        #: the operations themselves touch no Event.
        self._idle: trio.Event | None = None
        self._closed = trio.Event()
        plugin.attach(nursery)

    @property
    def state(self) -> State:
        return self._state

    # -- Initialize ----------------------------------------------------------------------------

    async def setup(
        self,
        config: betterproto2.Message | None,
        credentials: Mapping[str, str],
        namespace: str,
        config_dir: Path | None = None,
    ) -> None:
        """Initialize the plugin (typed). Raises ``InvalidArgument`` for a missing or mistyped
        config or a missing credential, and whatever the plugin's ``initialize`` raises. A failed
        setup may be retried. Cancellation (or shutdown) aborts it; the instance stays NEW.
        ``config_dir`` is what relative paths in the config are relative to
        (``BackendPlugin.config_path``)."""
        plugin = self.plugin
        if self._state in (State.CLOSING, State.CLOSED):
            raise Unavailable(f"plugin {plugin.name!r} is shut down")
        if self._state is State.READY:
            raise FailedPrecondition(f"plugin {plugin.name!r} is already initialized")
        if self._state is State.INITIALIZING:
            raise FailedPrecondition(f"plugin {plugin.name!r} is being initialized")
        config = self._check_config(config)
        missing = [key for key in plugin.required_credentials if not credentials.get(key)]
        if missing:
            names = ", ".join(repr(key) for key in missing)
            raise InvalidArgument(f"missing required credential {names}")
        self._redact = Redactor(credentials.values())
        self.namespace = namespace
        plugin.config_dir = config_dir
        self._state = State.INITIALIZING
        succeeded = False
        try:
            await self._guard(
                "initialize",
                lambda: plugin.initialize(config, Credentials(credentials), namespace),
            )
            succeeded = True
        finally:
            if self._state is State.INITIALIZING:  # not shut down meanwhile
                # A failed initialization leaves the instance NEW, so the host may try again.
                self._state = State.READY if succeeded else State.NEW

    def _check_config(self, config: betterproto2.Message | None) -> betterproto2.Message | None:
        expected = self.plugin.config_type
        if expected is None:
            if config is not None:
                raise InvalidConfig(
                    "",
                    f"plugin {self.plugin.name!r} takes no config, got {type(config).__qualname__}",
                )
            return None
        name = type_name(type_url(expected))
        if config is None:
            if self.plugin.config_required:
                raise InvalidConfig("", f"required ({name})")
            return expected()
        if type(config) is not expected:
            raise InvalidConfig("", f"expected {name}, got {type(config).__qualname__}")
        return config

    # -- HealthCheck ---------------------------------------------------------------------------

    async def health(self) -> HealthReport:
        """The plugin's health. Never raises: a failing ``health`` hook reads UNHEALTHY."""
        if self._state in (State.CLOSING, State.CLOSED):
            return HealthReport(HealthStatus.UNHEALTHY, "shut down")
        if self._state is not State.READY:
            return HealthReport(HealthStatus.UNHEALTHY, "not initialized")
        try:
            report = await self._guard("health", self.plugin.health)
        except GrpcError as exc:
            return HealthReport(HealthStatus.UNHEALTHY, exc.message)
        return HealthReport(
            report.status,
            self._redact(report.message),
            {key: self._redact(value) for key, value in report.details.items()},
        )

    # -- Execute -------------------------------------------------------------------------------

    def metrics(self) -> PluginMetrics:
        """The counters since the previous fetch; starts a new interval."""
        return self.plugin.metrics.snapshot_and_reset()

    def describe(self) -> PluginDescription:
        """The plugin's operations as its decorators declare them (``_prism.describe``)."""
        return PluginDescription(
            operations=[
                OperationDescription(
                    name=spec.name,
                    params_type=_payload_type_name(spec.params),
                    result_type=_payload_type_name(spec.result),
                    streaming=spec.streaming,
                    inbound_type="" if spec.inbound is None else _payload_type_name(spec.inbound),
                    features=sorted(spec.features),
                )
                for spec in self.plugin.operations.values()
            ]
        )

    async def call(
        self, operation: str, params: Payload, metadata: Mapping[str, str] | None = None
    ) -> Payload:
        """Run ``operation`` on typed params and return its typed result (in-process path).
        Raises the operation's ``GrpcError``. Cancellation cancels the handler."""
        return await self._run_unary(
            operation,
            metadata or {},
            lambda spec: _codec.check_payload(spec, params, spec.params, "params"),
        )

    async def _run_unary(
        self,
        operation: str,
        metadata: Mapping[str, str],
        params_for: Callable[[OperationSpec], Payload],
    ) -> Payload:
        started = time.perf_counter_ns()
        outcome = "cancelled"
        # Out of the proxy's process (a sidecar, a remote service), the call's log records get
        # the trace id the proxy sent; in-process, the proxy's own call context already has it.
        traced = None
        if metadata and LOG_CONTEXT.get() is None and "traceparent" in metadata:
            traced = LOG_CONTEXT.set(TraceparentFields(metadata["traceparent"]))
        try:
            spec = self._admit(operation, streaming=False)
            params = params_for(spec)
            handler = getattr(self.plugin, spec.method)
            ctx = OperationContext(operation, metadata, self.namespace, self.plugin.metrics)
            cancel = CALLER_CANCEL.get()
            run = lambda: handler(params, ctx)  # noqa: E731
            if cancel is not None:
                result = await self._guard_in_caller_scope(operation, cancel, run)
            else:
                result = await self._guard(f"operation {operation!r}", run)
            checked = self._checked(_codec.check_result, spec, result)
            outcome = "ok"
            return checked
        except GrpcError:
            outcome = "failed"
            raise
        finally:
            latency = None if outcome == "cancelled" else time.perf_counter_ns() - started
            self.plugin.metrics.record_request(failed=outcome == "failed", latency_ns=latency)
            if traced is not None:
                LOG_CONTEXT.reset(traced)

    # -- ExecuteStream -------------------------------------------------------------------------

    async def call_stream(
        self,
        operation: str,
        params: Payload,
        send: Send,
        receive: Receive | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Run a stream operation (in-process path): ``send`` gets each typed result;
        ``receive`` gives the client's further requests, or None at the end (default: none).
        Returns when the handler does; raises its ``GrpcError``. Cancellation ends the stream."""

        async def no_more() -> None:
            return None

        def bind(spec: OperationSpec) -> tuple[Payload, Outbound, Receive]:
            source = receive or no_more

            async def inbound() -> Payload | None:
                request = await source()
                if request is None:
                    return None
                return _codec.check_payload(spec, request, spec.inbound, "request")

            def outbound(result: Payload | SharedResult) -> Awaitable[None]:
                return send(result.value if isinstance(result, SharedResult) else result)

            return _codec.check_payload(spec, params, spec.params, "params"), outbound, inbound

        await self._run_stream(operation, metadata or {}, bind)

    async def _run_stream(
        self,
        operation: str,
        metadata: Mapping[str, str],
        bind: Callable[[OperationSpec], tuple[Payload, Outbound, Receive]],
    ) -> None:
        outcome = "cancelled"
        traced = None  # as in _run_unary: a sidecar's log records get the proxy's trace id
        if metadata and LOG_CONTEXT.get() is None and "traceparent" in metadata:
            traced = LOG_CONTEXT.set(TraceparentFields(metadata["traceparent"]))
        try:
            spec = self._admit(operation, streaming=True)
            params, send, receive = bind(spec)
            half_closed = trio.Event()

            expected = spec.result

            def checked_send(result: Payload | SharedResult) -> Awaitable[None]:
                # Runs once per result and stream, so it is lean: the check inline, and the
                # send's own awaitable handed back instead of a coroutine of ours around it
                # (each layer is an object per send and a frame every resumption goes through).
                value = result.value if isinstance(result, SharedResult) else result
                if type(value) is not expected:
                    self._checked(_codec.check_stream_result, spec, result)  # raises Internal
                return send(result)

            async def after_half_close() -> None:
                await half_closed.wait()

            stream = OperationStream(
                operation,
                metadata,
                self.namespace,
                self.plugin.metrics,
                checked_send,
                receive if spec.inbound is not None else after_half_close,
            )
            handler = getattr(self.plugin, spec.method)
            run = functools.partial(
                self._guard, f"operation {operation!r}", lambda: handler(params, stream)
            )
            if spec.inbound is None:
                await _watch_client(run, receive, half_closed)
            else:
                await run()
            outcome = "ok"
        except GrpcError:
            outcome = "failed"
            raise
        finally:
            # A stream counts once, when it ends; its duration is no latency (see metrics.py).
            self.plugin.metrics.record_request(failed=outcome == "failed", latency_ns=None)
            if traced is not None:
                LOG_CONTEXT.reset(traced)

    # -- shared --------------------------------------------------------------------------------

    def _admit(self, operation: str, *, streaming: bool) -> OperationSpec:
        name = self.plugin.name
        if self._state in (State.CLOSING, State.CLOSED):
            raise Unavailable(f"plugin {name!r} is shut down")
        if self._state is not State.READY:
            raise FailedPrecondition(f"plugin {name!r} is not initialized")
        spec = self.plugin.operations.get(operation)
        if spec is None:
            raise Unimplemented(f"plugin {name!r} has no operation {operation!r}")
        if spec.streaming != streaming:
            call = "ExecuteStream" if spec.streaming else "Execute"
            raise Unimplemented(f"operation {operation!r} of plugin {name!r} is called by {call}")
        return spec

    def _checked(
        self, check: Callable[[OperationSpec, object], T], spec: OperationSpec, value: object
    ) -> T:
        try:
            return check(spec, value)
        except GrpcError as exc:
            # A handler returned the wrong type: the plugin's bug, worth a log line.
            self.plugin.logger.error("plugin %r: %s", self.plugin.name, exc.message)
            raise

    async def _guard(self, where: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run plugin code: status errors pass (secrets scrubbed), anything else becomes a
        logged ``Unknown``; shutdown may cancel it (then ``Unavailable``)."""
        scope = trio.CancelScope()
        self._inflight.add(scope.cancel)
        try:
            with scope:
                try:
                    return await run()
                except GrpcError as exc:
                    raise self._redact.error(exc) from None
                except Exception as exc:
                    raise self._unexpected(exc, where) from None
        finally:
            self._left(scope.cancel)
        # Only reached when shutdown cancelled our scope. If the caller was cancelled too, its
        # cancellation wins.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise Unavailable(f"plugin {self.plugin.name!r} shut down during {where}")

    async def _guard_in_caller_scope(
        self, operation: str, cancel: Callable[[], None], run: Callable[[], Awaitable[T]]
    ) -> T:
        """``_guard`` for a unary operation whose caller's scope is cancelled through ``cancel``
        (:data:`CALLER_CANCEL`): no scope of its own; a shutdown's cancellation reaches the
        caller, which ends the call (UNAVAILABLE at the proxy's front door)."""
        self._inflight.add(cancel)
        try:
            return await run()
        except GrpcError as exc:
            raise self._redact.error(exc) from None
        except Exception as exc:
            raise self._unexpected(exc, f"operation {operation!r}") from None
        finally:
            self._left(cancel)

    def _left(self, cancel: Callable[[], None]) -> None:
        self._inflight.discard(cancel)
        if not self._inflight and self._idle is not None:
            self._idle.set()

    async def _drained(self) -> None:
        """Until no operation is in flight (a shutdown refuses new ones meanwhile)."""
        if self._inflight:
            if self._idle is None or self._idle.is_set():
                self._idle = trio.Event()
            await self._idle.wait()

    def _unexpected(self, exc: Exception, where: str) -> GrpcError:
        single = _single_grpc_error(exc)
        if single is not None:
            return self._redact.error(single)
        return report_unexpected(self.plugin.logger, exc, where)

    # -- Shutdown ------------------------------------------------------------------------------

    async def aclose(self, grace: float | None = None) -> None:
        """Shut down (typed) within ``grace`` seconds in all (None = the plugin's default), so
        that a host bounding Shutdown by the grace it sent never cuts the plugin short.

        Refuse new operations (``Unavailable``) and call the plugin's ``begin_shutdown``; give
        in-flight operations the first :data:`DRAIN_SHARE` of ``grace``, then cancel the rest;
        run the plugin's ``shutdown`` hook within what remains (at least the other share); then
        cancel the instance nursery and wait for its tasks within what is still left (and a
        moment more, for tasks that end on cancellation). Idempotent: a second call waits for
        the first. Raises ``Unknown`` if a hook failed (the instance is closed regardless).
        Cancelling it leaves the instance CLOSED with its tasks cancelled."""
        if self._state in (State.CLOSING, State.CLOSED):
            await self._closed.wait()
            return
        if grace is None:
            grace = self.plugin.default_grace_seconds
        started = trio.current_time()
        deadline = started + grace
        drain_deadline = started + grace * DRAIN_SHARE
        run_hook = self._state in (State.READY, State.INITIALIZING)
        self._state = State.CLOSING
        failure: GrpcError | None = None
        try:
            if run_hook:
                try:
                    self.plugin.begin_shutdown()
                except Exception as exc:
                    failure = report_unexpected(self.plugin.logger, exc, "begin_shutdown")
            with trio.move_on_at(drain_deadline):
                await self._drained()
            for cancel in list(self._inflight):
                cancel()
            # Cancelled operations unwind at their next checkpoint: not worth more of the budget
            # than the drain had.
            with trio.move_on_at(drain_deadline + _UNWIND_GRACE):
                await self._drained()
            if run_hook:
                with trio.move_on_at(deadline):
                    try:
                        await self.plugin.shutdown(max(0.0, deadline - trio.current_time()))
                    except GrpcError as exc:
                        failure = self._redact.error(exc)
                    except Exception as exc:
                        failure = report_unexpected(self.plugin.logger, exc, "shutdown")
        finally:
            self._state = State.CLOSED
            self._nursery.cancel_scope.cancel()
            try:
                if self._tasks_done is not None:
                    # Answer Shutdown only once the plugin's tasks (and what they hold) are gone.
                    with trio.move_on_at(max(deadline, trio.current_time() + _UNWIND_GRACE)):
                        await self._tasks_done.wait()
            finally:
                self._closed.set()
        if failure is not None:
            raise failure


async def _watch_client(
    run: Callable[[], Awaitable[None]], receive: Receive, half_closed: trio.Event
) -> None:
    """Run a stream handler that reads no further requests, while watching the client's side:
    a further request (``receive`` raises ``InvalidArgument``) ends the stream with that error,
    a half-close just sets ``half_closed``."""
    error: GrpcError | None = None
    async with open_nursery_unwrapped() as nursery:

        async def watch() -> None:
            nonlocal error
            try:
                await receive()
            except GrpcError as exc:
                error = exc
                nursery.cancel_scope.cancel()
            else:
                half_closed.set()

        nursery.start_soon(watch)
        await run()
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error


def _single_grpc_error(exc: BaseException) -> GrpcError | None:
    """The status error inside a group that holds nothing else (a handler's own nursery)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, GrpcError) else None


def _payload_type_name(payload_type: type) -> str:
    """A message's full protobuf name ("prism.data.v1.GetRequest"), or "bytes" for raw."""
    return "bytes" if payload_type is bytes else type_name(type_url(payload_type))
