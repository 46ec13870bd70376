"""The engine: one plugin object driven through the RFC's five calls.

``open_plugin(plugin)`` opens the instance scope (the nursery the plugin's tasks live in) and
yields a ``PluginInstance``, which offers each call twice:

- on the RFC's messages, for hosts that speak the protocol (sidecar / remote servers, and the
  proxy when it forwards bytes): ``initialize``, ``health_check``, ``execute``,
  ``execute_stream``, ``shutdown`` (``execute_encoded`` and ``execute_stream_encoded`` take and
  give the encoded messages, without decoding the envelopes). Operation errors come back in
  ``ExecuteResponse`` (``success=False``, ``error``, ``error_code`` = the gRPC status); they are
  never raised.
  ``InitializeResponse`` / ``ShutdownResponse`` have no code field, so their ``error`` reads
  ``"<STATUS_NAME>: <message>"`` (``errors.error_from_text`` parses it back).
- typed, for in-process hosting, without serialization: ``setup``, ``health``, ``call``,
  ``call_stream``, ``aclose``. These raise ``GrpcError`` subclasses. Payloads are passed by
  reference: neither side may mutate a message after handing it over.

Metrics travel over the protocol as the reserved operation ``_prism.metrics`` (the RFC has no
metrics call): its ``typed_result`` is ``PluginMetrics``, and fetching it starts a new interval.
It is answered in every state and is not counted as a request, nor listed in
``supported_operations``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import trio

from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    InitializeRequest,
    InitializeResponse,
    ShutdownRequest,
    ShutdownResponse,
    StreamRequest,
    StreamResponse,
)
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, InvalidArgument
from prism.plugin_protocol import DESCRIBE_OPERATION, METRICS_OPERATION
from prism.sdk import _codec, _envelope
from prism.sdk._engine import CALLER_CANCEL, Engine, Outbound, Receive, State
from prism.sdk._nursery import open_nursery_unwrapped
from prism.sdk.config import config_dir_from_any, config_from_any
from prism.sdk.plugin import BackendPlugin, OperationSpec, Payload
from prism.sdk.shared import SharedResult
from prism.sdk.typed import pack

__all__ = ["CALLER_CANCEL", "METRICS_OPERATION", "PluginInstance", "State", "open_plugin"]


@asynccontextmanager
async def open_plugin(plugin: BackendPlugin) -> AsyncIterator[PluginInstance]:
    """The instance scope of ``plugin``: yields its ``PluginInstance`` (not yet initialized).

    The plugin's tasks run in a nursery of their own, so shutting the instance down (which
    cancels them) does not cancel the block, where a server may still be answering Shutdown.
    Leaving the block shuts the instance down gracefully if nobody did (shielded, bounded by
    the plugin's default grace period and a second). A plugin background task that crashes cancels
    the block and its exception propagates.
    """
    async with open_nursery_unwrapped() as outer:
        tasks_done = trio.Event()
        plugin_nursery: trio.Nursery = await outer.start(_plugin_nursery, tasks_done)
        instance = PluginInstance(plugin, plugin_nursery, tasks_done)
        try:
            yield instance
        finally:
            # aclose fits in the grace; a second more for the hook's last checkpoint.
            with trio.move_on_after(plugin.default_grace_seconds + 1) as cleanup:
                cleanup.shield = True
                # The shutdown hook's failure reached the log with a trace id; nobody to tell here.
                with contextlib.suppress(GrpcError):
                    await instance.aclose()
            plugin_nursery.cancel_scope.cancel()


async def _plugin_nursery(done: trio.Event, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()  # until shutdown cancels this nursery
    finally:
        done.set()


class PluginInstance(Engine):
    """A ``BackendPlugin`` object in its instance scope; see the module docstring."""

    async def initialize(self, request: InitializeRequest) -> InitializeResponse:
        """``Initialize`` on the RFC's messages: never raises a ``GrpcError`` (the status is the
        ``"NAME: "`` prefix of ``error``). Cancellation aborts the plugin's ``initialize`` and
        leaves the instance NEW."""
        plugin = self.plugin
        try:
            config = config_from_any(request.config, plugin.config_type)
            config_dir = config_dir_from_any(request.config)
            await self.setup(config, request.credentials, request.namespace, config_dir)
        except GrpcError as exc:
            return InitializeResponse(
                success=False, error=str(self._redact.error(exc)), plugin_version=plugin.version
            )
        return InitializeResponse(
            success=True,
            plugin_version=plugin.version,
            supported_operations=list(plugin.supported_operations),
        )

    async def health_check(self, request: HealthCheckRequest | None = None) -> HealthCheckResponse:
        """``HealthCheck`` on the RFC's messages (``connection_id`` is not used). Never raises;
        cancellation cancels the plugin's ``health`` hook."""
        report = await self.health()
        return HealthCheckResponse(
            status=report.status, message=report.message, details=dict(report.details)
        )

    async def execute(self, request: ExecuteRequest) -> ExecuteResponse:
        """``Execute`` on the RFC's messages: errors are returned, not raised. Cancellation
        cancels the handler."""
        if request.operation == METRICS_OPERATION:
            return ExecuteResponse(success=True, typed_result=pack(self.metrics()))
        if request.operation == DESCRIBE_OPERATION:
            return ExecuteResponse(success=True, typed_result=pack(self.describe()))
        try:
            result = await self._run_unary(
                request.operation,
                request.metadata,
                lambda spec: _codec.decode(spec, request, spec.params, "params"),
            )
        except GrpcError as exc:
            return ExecuteResponse(success=False, error=exc.message, error_code=int(exc.status))
        return _codec.encode_result(result)

    async def execute_encoded(self, request: bytes) -> bytes | Pieces:
        """``execute`` on encoded messages (what sidecar, remote and in-process hosts forward):
        an ``ExecuteRequest``'s bytes → the ``ExecuteResponse``'s, without decoding either
        envelope through betterproto2 (see ``_envelope``). A malformed request raises
        ``InvalidArgument``; operation errors are returned. Cancellation cancels the handler."""
        envelope = _envelope.read_execute(request)
        if envelope.operation == METRICS_OPERATION:
            return _envelope.execute_result(self.metrics())
        if envelope.operation == DESCRIBE_OPERATION:
            return _envelope.execute_result(self.describe())
        try:
            result = await self._run_unary(
                envelope.operation,
                envelope.metadata,
                lambda spec: _codec.decode_params(
                    spec, envelope.params_field, envelope.params, spec.params, "params"
                ),
            )
        except GrpcError as exc:
            return _envelope.execute_error(exc)
        return _envelope.execute_reply(result)  # a large raw_result: Pieces, not a copy

    async def execute_stream(
        self,
        receive: Callable[[], Awaitable[StreamRequest | None]],
        send: Callable[[StreamResponse], Awaitable[None]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """``ExecuteStream`` on the RFC's messages, for a server handler: ``receive`` is its
        ``call.receive_message`` (None once the client half-closed), ``send`` its
        ``call.send_message``. The first request names the operation and carries its params;
        later ones carry the declared ``inbound`` type (their ``operation`` may be empty). When
        the handler returns, a final ``StreamResponse(is_final=True)`` without a result is sent.
        ``StreamResponse`` has no error field: errors are raised as ``GrpcError`` for the call's
        status. Cancellation (the client's reset, a deadline) ends the handler."""
        first = await receive()
        if first is None:
            raise InvalidArgument("the stream ended before its first request")

        def bind(spec: OperationSpec) -> tuple[Payload, Outbound, Receive]:
            async def inbound() -> Payload | None:
                request = await receive()
                if request is None:
                    return None
                _check_operation(spec, request.operation)
                return _codec.decode(spec, request, spec.inbound, "request")

            async def outbound(result: Payload | SharedResult) -> None:
                value = result.value if isinstance(result, SharedResult) else result
                await send(_codec.encode_stream_result(value))

            return _codec.decode(spec, first, spec.params, "params"), outbound, inbound

        await self._run_stream(first.operation, _merged(first.metadata, metadata), bind)
        await send(StreamResponse(is_final=True))

    async def execute_stream_encoded(
        self,
        receive: Callable[[], Awaitable[bytes | None]],
        send: Callable[[bytes | Pieces], Awaitable[None]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """``execute_stream`` on encoded messages (what sidecar, remote and in-process hosts
        forward): ``StreamRequest`` bytes in, ``StreamResponse`` bytes out, neither envelope
        decoded or encoded through betterproto2 (see ``_envelope``). A ``SharedResult`` goes
        out as the bytes it encoded once for every stream that sends it. A malformed request
        raises ``InvalidArgument``; otherwise as ``execute_stream``."""
        data = await receive()
        if data is None:
            raise InvalidArgument("the stream ended before its first request")
        first = _envelope.read_stream_request(data, metadata=True)

        def bind(spec: OperationSpec) -> tuple[Payload, Outbound, Receive]:
            async def inbound() -> Payload | None:
                data = await receive()
                if data is None:
                    return None
                request = _envelope.read_stream_request(data)
                _check_operation(spec, request.operation)
                return _codec.decode_params(
                    spec, request.params_field, request.params, spec.inbound, "request"
                )

            def outbound(result: Payload | SharedResult) -> Awaitable[None]:
                # Not a coroutine of its own: the send's awaitable goes back (see _run_stream).
                if isinstance(result, SharedResult):
                    return send(result.stream_response())
                return send(_envelope.stream_reply(result))

            params = _codec.decode_params(
                spec, first.params_field, first.params, spec.params, "params"
            )
            return params, outbound, inbound

        await self._run_stream(first.operation, _merged(first.metadata, metadata), bind)
        await send(_envelope.STREAM_FINAL)

    async def shutdown(self, request: ShutdownRequest) -> ShutdownResponse:
        """``Shutdown`` on the RFC's messages (``grace_period_ms`` 0 = the plugin's default); see
        ``aclose``. Cancellation leaves the instance CLOSED with its tasks cancelled."""
        grace = request.grace_period_ms / 1000 if request.grace_period_ms > 0 else None
        try:
            await self.aclose(grace)
        except GrpcError as exc:
            return ShutdownResponse(success=False, error=str(exc))
        return ShutdownResponse(success=True)


def _check_operation(spec: OperationSpec, operation: str) -> None:
    """A stream's later requests may leave ``operation`` empty, or repeat the stream's."""
    if operation not in ("", spec.name):
        raise InvalidArgument(f"stream of operation {spec.name!r} got a request for {operation!r}")


def _merged(sent: Mapping[str, str], given: Mapping[str, str] | None) -> Mapping[str, str]:
    """A stream's metadata: its first request's map, and what the host passed (which wins)."""
    if not given:
        return sent
    return {**sent, **given} if sent else given
