"""Plugins and messages the SDK tests drive.

``WidgetConfig`` is written the way betterproto2 generates a message, with its own package's
message pool, so the SDK is tested against a message that is not in the core's pool (as every
plugin's config is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import betterproto2
import trio

from prism._proto.prism.data.v1 import (
    GetRequest,
    GetResponse,
    Message,
    PublishRequest,
    SetRequest,
    SetResponse,
    SubscribeRequest,
)
from prism.sdk import (
    BackendPlugin,
    HealthReport,
    HealthStatus,
    InvalidArgument,
    NotFound,
    OperationContext,
    OperationStream,
    Unauthenticated,
    operation,
    stream_operation,
)

# What a generated package's message_pool.py holds; found by prism.sdk.typed via the module.
default_message_pool = betterproto2.MessagePool()


@dataclass(eq=False, repr=False)
class WidgetConfig(betterproto2.Message):
    path: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    limit: int = betterproto2.field(2, betterproto2.TYPE_INT32)
    ratio: float = betterproto2.field(3, betterproto2.TYPE_DOUBLE)
    verbose: bool = betterproto2.field(4, betterproto2.TYPE_BOOL)
    # As generated: betterproto2 fields give their own default factories.
    tags: list[str] = betterproto2.field(5, betterproto2.TYPE_STRING, repeated=True)  # noqa: RUF009
    labels: dict[str, str] = betterproto2.field(  # noqa: RUF009
        6,
        betterproto2.TYPE_MAP,
        map_meta=betterproto2.map_meta(betterproto2.TYPE_STRING, betterproto2.TYPE_STRING),
    )
    size: int = betterproto2.field(7, betterproto2.TYPE_UINT64)


default_message_pool.register_message("test.widget.v1", "WidgetConfig", WidgetConfig)

SECRET = "hunter2-very-secret"


class WidgetPlugin(BackendPlugin):
    """Exercises every hook; records what the SDK did to it."""

    name = "widget"
    version = "1.2.3"
    config_type = WidgetConfig
    required_credentials = ("password",)
    default_grace_seconds = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.config: WidgetConfig | None = None
        self.credentials: Mapping[str, str] = {}
        self.namespace = ""
        self.events: list[str] = []
        self.store: dict[str, bytes] = {}
        self.release = trio.Event()
        self.health_report = HealthReport()
        self.fail_initialize_times = 0

    async def initialize(
        self, config: WidgetConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        if self.fail_initialize_times:
            self.fail_initialize_times -= 1
            raise RuntimeError(f"backend refused {credentials['password']}")
        if config.path == "":
            raise InvalidArgument("field 'path' is required")
        if credentials["password"] == "wrong":
            raise Unauthenticated("the backend rejected the credentials")
        self.config = config
        self.credentials = credentials
        self.namespace = namespace
        self.events.append("initialize")
        self.nursery.start_soon(self._background)

    async def _background(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.events.append("background cancelled")

    async def health(self) -> HealthReport:
        return self.health_report

    def begin_shutdown(self) -> None:
        self.events.append("begin_shutdown")

    async def shutdown(self, grace_seconds: float) -> None:
        self.events.append(f"shutdown {grace_seconds}")

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        if params.key not in self.store:
            ctx.cache_miss()
            raise NotFound(f"no key {params.key!r}")
        ctx.cache_hit()
        return GetResponse(found=True, value=self.store[params.key])

    @operation("set", params=SetRequest, result=SetResponse)
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        self.store[params.key] = params.value
        return SetResponse()

    @operation("echo_raw", params=bytes, result=bytes)
    async def echo_raw(self, params: bytes, ctx: OperationContext) -> bytes:
        return params + ctx.metadata.get("suffix", "").encode()

    @operation("metadata", params=bytes, result=bytes)
    async def metadata(self, params: bytes, ctx: OperationContext) -> bytes:
        return repr(sorted(ctx.metadata.items())).encode() + b"@" + ctx.namespace.encode()

    @operation("slow", params=bytes, result=bytes)
    async def slow(self, params: bytes, ctx: OperationContext) -> bytes:
        await self.release.wait()
        return b"done"

    @operation("crash", params=bytes, result=bytes)
    async def crash(self, params: bytes, ctx: OperationContext) -> bytes:
        raise RuntimeError(f"connection string postgres://u:{SECRET}@db failed")

    @operation("leak", params=bytes, result=bytes)
    async def leak(self, params: bytes, ctx: OperationContext) -> bytes:
        raise Unauthenticated(f"password {self.credentials['password']} rejected")

    @operation("group", params=bytes, result=bytes)
    async def group(self, params: bytes, ctx: OperationContext) -> bytes:
        async def fail() -> None:
            raise NotFound("inside a nursery")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        return b""

    @operation("wrong_result", params=bytes, result=GetResponse)
    async def wrong_result(self, params: bytes, ctx: OperationContext) -> Any:
        return SetResponse()

    @stream_operation("chat", params=SubscribeRequest, result=Message, inbound=PublishRequest)
    async def chat(self, params: SubscribeRequest, stream: OperationStream) -> None:
        """Echo every further request as a Message on the opening request's topic."""
        sequence = 0
        async for request in stream:
            assert isinstance(request, PublishRequest)
            sequence += 1
            await stream.send(
                Message(topic=params.topic, payload=request.payload, sequence=sequence)
            )
            if request.payload == b"fail":
                raise InvalidArgument("asked to fail")
        await stream.send(Message(topic=params.topic, payload=b"bye", sequence=sequence + 1))

    @stream_operation("count", params=bytes, result=bytes)
    async def count(self, params: bytes, stream: OperationStream) -> None:
        for i in range(int(params or b"3")):
            await stream.send(str(i).encode())

    @stream_operation("wait_for_close", params=bytes, result=bytes)
    async def wait_for_close(self, params: bytes, stream: OperationStream) -> None:
        assert await stream.receive() is None
        await stream.send(b"client closed")


class NoConfigPlugin(BackendPlugin):
    name = "noconfig"

    @operation("ping", params=bytes, result=bytes)
    async def ping(self, params: bytes, ctx: OperationContext) -> bytes:
        return b"pong"


class OptionalConfigPlugin(BackendPlugin):
    name = "optional"
    config_type = WidgetConfig
    config_required = False

    async def initialize(self, config: WidgetConfig, credentials: Any, namespace: str) -> None:
        self.config = config


class CrashingBackgroundPlugin(BackendPlugin):
    name = "crashy"

    async def initialize(self, config: None, credentials: Any, namespace: str) -> None:
        self.nursery.start_soon(self._explode)

    async def _explode(self) -> None:
        await trio.sleep(0.1)
        raise OSError("backend connection lost")


class UnhealthyPlugin(NoConfigPlugin):
    name = "unhealthy"

    async def health(self) -> HealthReport:
        if self.metrics.connections_active:
            return HealthReport(HealthStatus.DEGRADED, "one replica down", {"replicas": "1/2"})
        raise RuntimeError("health probe exploded")
