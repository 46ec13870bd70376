"""How the proxy talks to one plugin instance, whatever the deployment model.

The proxy side speaks bytes for Execute and ExecuteStream: a client's request is forwarded as
it came (see protos/prism/proxy/v1/proxy.proto), so nothing is decoded on the way to a sidecar
or remote plugin. The in-process client has the plugin read the envelopes (once, with
``prism.protowire``), because the plugin wants typed objects.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

import trio

from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    InitializeRequest,
    InitializeResponse,
    PluginDescription,
    PluginMetrics,
    ShutdownRequest,
    ShutdownResponse,
)
from prism.grpc.channel import Channel
from prism.grpc.client_call import ClientCall
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, Status
from prism.plugin_protocol import (
    DESCRIBE_OPERATION,
    METRICS_OPERATION,
    SERVICE_NAME,
    SESSION_METADATA,
)
from prism.sdk._nursery import open_nursery_unwrapped
from prism.sdk.instance import PluginInstance
from prism.sdk.typed import unpack

SERVICE = f"/{SERVICE_NAME}/"
_EXECUTE = SERVICE + "Execute"  # the hot path's method path, built once
ReceiveBytes = Callable[[], Awaitable[bytes | Pieces | None]]
SendBytes = Callable[[bytes | Pieces], Awaitable[None]]


class PluginClient(abc.ABC):
    #: What the plugin's InitializeResponse declared (``prism.hosting.model.initialize``).
    plugin_version: str = ""
    supported_operations: tuple[str, ...] = ()

    @abc.abstractmethod
    async def initialize(self, request: InitializeRequest) -> InitializeResponse: ...

    @abc.abstractmethod
    async def health_check(self) -> HealthCheckResponse: ...

    @abc.abstractmethod
    async def execute(self, request: bytes | Pieces) -> bytes | Pieces:
        """A plugin ``ExecuteRequest`` (encoded; a large one may come as :class:`Pieces`,
        sent on as they are) → its ``ExecuteResponse`` (encoded)."""

    @abc.abstractmethod
    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None:
        """Run one ExecuteStream: ``receive`` yields encoded ``StreamRequest``s (None = the
        client half-closed), ``send`` takes encoded ``StreamResponse``s. Returns when the plugin
        ends the stream; raises its ``GrpcError``. Cancellation cancels the plugin's side."""

    @abc.abstractmethod
    async def shutdown(self, grace: float, reason: str) -> ShutdownResponse: ...

    async def metrics(self) -> PluginMetrics:
        """Fetch (and reset) the plugin's interval metrics."""
        raw = await self.execute(bytes(ExecuteRequest(operation=METRICS_OPERATION)))
        response = ExecuteResponse.parse(bytes(raw))
        if not response.success or response.typed_result is None:
            return PluginMetrics()
        return unpack(response.typed_result, PluginMetrics)

    async def describe(self) -> PluginDescription | None:
        """The plugin's operations with their payload types (the reserved operation
        ``_prism.describe``); None from a plugin that does not answer it (one not built on
        the SDK: only its ``supported_operations`` are known)."""
        raw = await self.execute(bytes(ExecuteRequest(operation=DESCRIBE_OPERATION)))
        response = ExecuteResponse.parse(bytes(raw))
        if not response.success or response.typed_result is None:
            return None
        return unpack(response.typed_result, PluginDescription)


class InProcessClient(PluginClient):
    def __init__(self, instance: PluginInstance) -> None:
        self.instance = instance

    async def initialize(self, request: InitializeRequest) -> InitializeResponse:
        return await self.instance.initialize(request)

    async def health_check(self) -> HealthCheckResponse:
        return await self.instance.health_check(HealthCheckRequest())

    async def execute(self, request: bytes | Pieces) -> bytes | Pieces:
        return await self.instance.execute_encoded(
            request if type(request) is bytes else bytes(request)
        )

    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None:
        async def joined() -> bytes | None:
            data = await receive()
            return data if data is None or type(data) is bytes else bytes(data)

        await self.instance.execute_stream_encoded(joined, send)

    async def shutdown(self, grace: float, reason: str) -> ShutdownResponse:
        return await self.instance.shutdown(
            ShutdownRequest(grace_period_ms=int(grace * 1000), reason=reason)
        )

    async def metrics(self) -> PluginMetrics:
        return self.instance.metrics()

    async def describe(self) -> PluginDescription | None:
        return self.instance.describe()


class GrpcClient(PluginClient):
    """A sidecar (Unix socket) or remote (mTLS) plugin, over a prism.grpc channel.

    ``session``: sent as ``prism-plugin-session`` metadata on every call, so a remote plugin
    service keeps this proxy's plugin instance apart from other proxies' (see
    :mod:`prism.sdk.grpc_service`). Sidecars need none: the process is the instance.
    """

    def __init__(self, channel: Channel, session: str | None = None) -> None:
        self.channel = channel
        self.metadata: tuple[tuple[str, str], ...] = (
            () if session is None else ((SESSION_METADATA, session),)
        )

    async def initialize(self, request: InitializeRequest) -> InitializeResponse:
        response: InitializeResponse = await self.channel.unary_unary(
            SERVICE + "Initialize", request, InitializeResponse, metadata=self.metadata
        )
        return response

    async def health_check(self) -> HealthCheckResponse:
        response: HealthCheckResponse = await self.channel.unary_unary(
            SERVICE + "HealthCheck",
            HealthCheckRequest(),
            HealthCheckResponse,
            metadata=self.metadata,
        )
        return response

    async def execute(self, request: bytes | Pieces) -> bytes:
        response: bytes = await self.channel.unary_unary(
            _EXECUTE, request, bytes, metadata=self.metadata
        )
        return response

    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None:
        async with (
            self.channel.stream(SERVICE + "ExecuteStream", bytes, metadata=self.metadata) as call,
            open_nursery_unwrapped() as nursery,
        ):
            nursery.start_soon(_pump_requests, receive, call)
            with trio.CancelScope() as relay:
                nursery.start_soon(_watch_cut, call, relay)
                async for response in call:
                    if call.status == Status.RESOURCE_EXHAUSTED:
                        break
                    await send(response)
            if call.status == Status.RESOURCE_EXHAUSTED:
                # The plugin cut the stream (a subscriber that fell behind), perhaps while
                # `send` waited on that very subscriber: the results still queued here would
                # only delay its status.
                raise GrpcError.for_status(call.status, call.status_message, call.trailing_metadata)
            nursery.cancel_scope.cancel()

    async def shutdown(self, grace: float, reason: str) -> ShutdownResponse:
        response: ShutdownResponse = await self.channel.unary_unary(
            SERVICE + "Shutdown",
            ShutdownRequest(grace_period_ms=int(grace * 1000), reason=reason),
            ShutdownResponse,
            metadata=self.metadata,
        )
        return response


async def _watch_cut(call: ClientCall[bytes], relay: trio.CancelScope) -> None:
    """Stop the relay as soon as the plugin ends the stream with RESOURCE_EXHAUSTED."""
    await call.wait_ended()
    if call.status == Status.RESOURCE_EXHAUSTED:
        relay.cancel()


async def _pump_requests(receive: ReceiveBytes, call: ClientCall[bytes]) -> None:
    """The client's further stream requests → the plugin, then the half-close. A failure to
    send means the plugin's side of the call ended: its status arrives on the response side."""
    try:
        while (data := await receive()) is not None:
            await call.send_message(data)
        await call.end()
    except GrpcError:
        return
