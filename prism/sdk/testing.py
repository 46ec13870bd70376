"""Test a plugin without a proxy or a network.

```python
async with PluginHarness(MemstorePlugin, config=MemstoreConfig(max_keys=10)) as h:
    await h.execute("set", SetRequest(key="a", value=b"1"))
    assert (await h.execute("get", GetRequest(key="a"))).value == b"1"
    async with h.stream("subscribe", SubscribeRequest(topic="t")) as sub:
        ...
        message = await sub.receive()
    print(h.metrics())
```

By default every call goes through the RFC's messages exactly as a sidecar would see them: the
request is packed into an ``Any``, encoded to bytes and decoded again, handled, and the response
likewise (streams take the sidecar's own path, ``execute_stream_encoded``: bytes both ways), so
a message that does not survive serialization fails the test. ``typed=True`` uses
the in-process path (``PluginInstance.call``) instead. Errors are raised as the ``GrpcError``
subclass of the status the plugin reported.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import betterproto2
import trio
import trio.testing

from prism._proto.google.protobuf import Any as AnyMessage
from prism._proto.google.protobuf import Struct
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    InitializeRequest,
    PluginMetrics,
    ShutdownRequest,
    ShutdownResponse,
    StreamRequest,
    StreamResponse,
)
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, InvalidArgument, Unimplemented
from prism.sdk._nursery import open_nursery_unwrapped
from prism.sdk.config import config_from_mapping
from prism.sdk.errors import error_from_text
from prism.sdk.instance import PluginInstance, open_plugin
from prism.sdk.plugin import BackendPlugin, OperationSpec, Payload
from prism.sdk.typed import pack, unpack

__all__ = ["HarnessStream", "PluginHarness", "roundtrip"]

M = TypeVar("M", bound=betterproto2.Message)


def roundtrip(message: M) -> M:
    """``message`` encoded and decoded again, as it would cross a process boundary."""
    return type(message).parse(bytes(message))


# Fresh messages either way: betterproto2 does not clear the other oneof member.


def _execute_request(operation: str, params: Payload) -> ExecuteRequest:
    if isinstance(params, bytes):
        return ExecuteRequest(operation=operation, raw_params=params)
    return ExecuteRequest(operation=operation, typed_params=pack(params))


def _stream_request(operation: str, params: Payload) -> StreamRequest:
    if isinstance(params, bytes):
        return StreamRequest(operation=operation, raw_params=params)
    return StreamRequest(operation=operation, typed_params=pack(params))


class PluginHarness:
    """An initialized plugin instance for tests; see the module docstring.

    ``plugin`` is the plugin class or any callable returning a fresh plugin object (to inject a
    clock, say). ``config`` is the plugin's config message, or a mapping as an operator writes
    it in the proxy's YAML (sent as a ``ConfigDocument``, as the proxy does). ``config_dir`` is
    the config file's directory the proxy would send (``BackendPlugin.config_path``).
    Initialization errors are raised from ``async with``.
    """

    def __init__(
        self,
        plugin: Callable[[], BackendPlugin],
        *,
        config: betterproto2.Message | Mapping[str, Any] | None = None,
        credentials: Mapping[str, str] | None = None,
        namespace: str = "test",
        typed: bool = False,
        config_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._factory = plugin
        self._config = config
        self._config_dir = None if config_dir is None else Path(config_dir)
        self._credentials = dict(credentials or {})
        self._namespace = namespace
        self.typed = typed
        self._stack = AsyncExitStack()
        self._instance: PluginInstance | None = None

    @property
    def instance(self) -> PluginInstance:
        if self._instance is None:
            raise RuntimeError("use the harness inside `async with`")
        return self._instance

    @property
    def plugin(self) -> BackendPlugin:
        return self.instance.plugin

    async def __aenter__(self) -> PluginHarness:
        async with AsyncExitStack() as stack:
            instance = await stack.enter_async_context(open_plugin(self._factory()))
            if self.typed:
                config = self._config
                if isinstance(config, Mapping):
                    expected = instance.plugin.config_type
                    if expected is None:
                        raise InvalidArgument("the plugin takes no config")
                    config = config_from_mapping(expected, config)
                await instance.setup(config, self._credentials, self._namespace, self._config_dir)
            else:
                request = InitializeRequest(
                    namespace=self._namespace,
                    backend_type=instance.plugin.name,
                    config=self._packed_config(),
                    credentials=self._credentials,
                )
                response = await instance.initialize(roundtrip(request))
                response = roundtrip(response)
                if not response.success:
                    raise error_from_text(-1, response.error)
            self._stack = stack.pop_all()
        self._instance = instance
        return self

    def _packed_config(self) -> AnyMessage | None:
        config = self._config
        if self._config_dir is None:
            if config is None:
                return None
            if not isinstance(config, Mapping):
                return pack(config)
        # Only a ConfigDocument carries the directory, so a message goes as its mapping, which
        # is what the proxy would send for it.
        if config is None:
            values: Mapping[str, Any] = {}
        elif isinstance(config, Mapping):
            values = config
        else:
            values = config.to_dict()
        document = ConfigDocument(
            values=Struct.from_dict(dict(values)), base_dir=str(self._config_dir or "")
        )
        return pack(document)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._instance = None
        return await self._stack.__aexit__(exc_type, exc, tb)

    def _spec(self, operation: str) -> OperationSpec:
        spec = self.plugin.operations.get(operation)
        if spec is None:
            raise Unimplemented(f"plugin {self.plugin.name!r} has no operation {operation!r}")
        return spec

    async def execute(
        self, operation: str, params: Payload = b"", metadata: Mapping[str, str] | None = None
    ) -> Payload:
        """Run one operation; returns its result (a message or bytes) or raises its error."""
        if self.typed:
            return await self.instance.call(operation, params, metadata)
        request = _execute_request(operation, params)
        request.metadata = dict(metadata or {})
        response = roundtrip(await self.execute_request(request))
        if not response.success:
            raise GrpcError.for_status(response.error_code, response.error)
        result: Payload
        if response.raw_result is not None:
            result = response.raw_result
            return result
        result = unpack(response.typed_result, self._spec(operation).result)
        return result

    async def execute_request(self, request: ExecuteRequest) -> ExecuteResponse:
        """The raw protocol: an ``ExecuteRequest`` in (serialized on the way), its response out."""
        return roundtrip(await self.instance.execute(roundtrip(request)))

    async def health(self) -> HealthCheckResponse:
        return roundtrip(await self.instance.health_check(roundtrip(HealthCheckRequest())))

    def metrics(self) -> PluginMetrics:
        """The counters since the previous fetch (this starts a new interval)."""
        return self.instance.metrics()

    async def shutdown(self, grace_seconds: float = 0) -> ShutdownResponse:
        request = ShutdownRequest(grace_period_ms=round(grace_seconds * 1000), reason="test")
        return roundtrip(await self.instance.shutdown(roundtrip(request)))

    @asynccontextmanager
    async def stream(
        self, operation: str, params: Payload = b"", metadata: Mapping[str, str] | None = None
    ) -> AsyncIterator[HarnessStream]:
        """Open a stream operation; yields once every task is blocked (so a subscription is in
        place before the body publishes). Leaving the block cancels the stream, as a client
        that goes away does."""
        stream = HarnessStream(self, operation, params, metadata or {})
        async with open_nursery_unwrapped() as nursery:
            nursery.start_soon(stream._run)
            await trio.testing.wait_all_tasks_blocked()
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()


class HarnessStream:
    """The client's end of one stream operation opened by ``PluginHarness.stream``."""

    def __init__(
        self,
        harness: PluginHarness,
        operation: str,
        params: Payload,
        metadata: Mapping[str, str],
    ) -> None:
        self._harness = harness
        self._operation = operation
        self._params = params
        self._metadata = metadata
        self._spec = harness._spec(operation)
        # Unbounded towards the plugin (the test is the client and never waits for it); no
        # buffer back, so a test that does not read is the slowest possible client.
        self._to_plugin, self._from_client = trio.open_memory_channel[Payload](math.inf)
        self._results_in, self._results = trio.open_memory_channel[Payload](0)
        self._first_sent = False
        self.error: GrpcError | None = None
        self.final = False

    async def _run(self) -> None:
        async with self._results_in:
            try:
                if self._harness.typed:
                    await self._harness.instance.call_stream(
                        self._operation,
                        self._params,
                        self._results_in.send,
                        self._next_params,
                        self._metadata,
                    )
                    self.final = True
                else:
                    await self._harness.instance.execute_stream_encoded(
                        self._receive_request, self._send_response, self._metadata
                    )
            except GrpcError as exc:
                self.error = exc

    async def _next_params(self) -> Payload | None:
        try:
            return await self._from_client.receive()
        except trio.EndOfChannel:
            return None

    async def _receive_request(self) -> bytes | None:
        if not self._first_sent:
            self._first_sent = True
            return bytes(_stream_request(self._operation, self._params))
        params = await self._next_params()
        if params is None:
            return None
        return bytes(_stream_request("", params))

    async def _send_response(self, data: bytes | Pieces) -> None:
        response = StreamResponse.parse(bytes(data))
        if response.is_final:
            self.final = True
        elif response.raw_result is not None:
            await self._results_in.send(response.raw_result)
        else:
            await self._results_in.send(unpack(response.typed_result, self._spec.result))

    async def receive(self) -> Payload | None:
        """The next result; None once the stream ended normally. Raises the stream's error."""
        try:
            return await self._results.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from None
            return None

    def __aiter__(self) -> AsyncIterator[Payload]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Payload]:
        while (result := await self.receive()) is not None:
            yield result

    async def send(self, params: Payload) -> None:
        """Send a further request (the operation's ``inbound`` type)."""
        await self._to_plugin.send(params)

    async def end(self) -> None:
        """Half-close: the plugin's ``stream.receive()`` returns None from now on."""
        await self._to_plugin.aclose()
