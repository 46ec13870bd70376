"""memstore: an in-memory key-value store with TTLs, plus topic publish/subscribe.

Nothing survives the instance: it is the proxy's embedded default and a reference plugin.
Time is ``trio.current_time()``, so tests drive TTLs with Trio's ``MockClock``.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    Message,
    PublishRequest,
    PublishResponse,
    SetRequest,
    SetResponse,
    SubscribeRequest,
)
from prism.sdk import (
    BackendPlugin,
    HealthReport,
    InvalidArgument,
    NotFound,
    OperationContext,
    OperationStream,
    ResourceExhausted,
    Unavailable,
    operation,
    stream_operation,
)
from prism_plugin_memstore._proto.prism.plugins.memstore.v1 import MemstoreConfig
from prism_plugin_memstore.broker import Broker
from prism_plugin_memstore.store import KeyValueStore, StoreFull

__all__ = ["MemstorePlugin"]

DEFAULT_SWEEP_INTERVAL_MS = 1000
DEFAULT_SUBSCRIBER_BUFFER = 1024
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000


def _key(key: str) -> str:
    if not key:
        raise InvalidArgument("key must not be empty")
    return key


def _non_negative(config: MemstoreConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise InvalidArgument(f"config field {name!r} must not be negative")


class MemstorePlugin(BackendPlugin):
    name = "memstore"
    version = "0.1.0"
    config_type = MemstoreConfig
    config_required = False  # every field has a default

    def __init__(self) -> None:
        super().__init__()
        self._store = KeyValueStore()
        self._broker = Broker(DEFAULT_SUBSCRIBER_BUFFER)
        self._default_ttl = 0.0

    async def initialize(
        self, config: MemstoreConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        _non_negative(
            config, "max_keys", "default_ttl_ms", "sweep_interval_ms", "subscriber_buffer"
        )
        self._store = KeyValueStore(config.max_keys)
        self._broker = Broker(config.subscriber_buffer or DEFAULT_SUBSCRIBER_BUFFER)
        self._default_ttl = config.default_ttl_ms / 1000
        interval = (config.sweep_interval_ms or DEFAULT_SWEEP_INTERVAL_MS) / 1000
        self.nursery.start_soon(self._sweep_forever, interval)

    async def _sweep_forever(self, interval: float) -> None:
        # Expired keys are already invisible; this only gives their memory back.
        while True:
            await trio.sleep(interval)
            self._store.sweep(trio.current_time())

    async def health(self) -> HealthReport:
        return HealthReport(
            details={"keys": str(len(self._store)), "subscribers": str(self._broker.subscribers)}
        )

    def begin_shutdown(self) -> None:
        # Subscriptions never end on their own: end them now (UNAVAILABLE, so clients
        # resubscribe to the next instance) instead of waiting out the grace period.
        self._broker.close()

    # -- key-value -----------------------------------------------------------------------------

    def _expires_at(self, ttl_ms: int, now: float) -> float | None:
        if ttl_ms < 0:
            raise InvalidArgument("ttl_ms must not be negative")
        ttl = ttl_ms / 1000 if ttl_ms else self._default_ttl
        return now + ttl if ttl else None

    def _set(self, key: str, value: bytes, ttl_ms: int) -> None:
        now = trio.current_time()
        try:
            self._store.set(_key(key), value, self._expires_at(ttl_ms, now), now)
        except StoreFull:
            raise ResourceExhausted(
                f"memstore is full ({self._store.max_keys} keys): delete keys or raise max_keys"
            ) from None

    def _get(self, key: str, ctx: OperationContext) -> bytes | None:
        value = self._store.get(_key(key), trio.current_time())
        if value is None:
            ctx.cache_miss()
        else:
            ctx.cache_hit()
        return value

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        value = self._get(params.key, ctx)
        if value is None:
            return GetResponse(found=False)
        return GetResponse(found=True, value=value)

    @operation("set", params=SetRequest, result=SetResponse)
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        self._set(params.key, params.value, params.ttl_ms)
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse(deleted=self._store.delete(_key(params.key), trio.current_time()))

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        return ExistsResponse(exists=self._store.exists(_key(params.key), trio.current_time()))

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        if params.limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(params.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        keys, truncated = self._store.list_keys(
            params.prefix, params.start_after, limit, trio.current_time()
        )
        return ListKeysResponse(keys=keys, truncated=truncated)

    # Raw bytes, no protobuf: the key (and optional "ttl_ms") travel in the request metadata.

    @operation("set_raw", params=bytes, result=bytes)
    async def set_raw(self, params: bytes, ctx: OperationContext) -> bytes:
        ttl = ctx.metadata.get("ttl_ms", "0")
        try:
            ttl_ms = int(ttl)
        except ValueError:
            raise InvalidArgument(f"metadata 'ttl_ms' must be an integer, got {ttl!r}") from None
        self._set(self._raw_key(ctx), params, ttl_ms)
        return b""

    @operation("get_raw", params=bytes, result=bytes)
    async def get_raw(self, params: bytes, ctx: OperationContext) -> bytes:
        key = self._raw_key(ctx)
        value = self._get(key, ctx)
        if value is None:
            raise NotFound(f"no key {key!r}")
        return value

    @staticmethod
    def _raw_key(ctx: OperationContext) -> str:
        key = ctx.metadata.get("key", "")
        if not key:
            raise InvalidArgument("metadata 'key' is required")
        return key

    # -- publish / subscribe -------------------------------------------------------------------

    @operation("publish", params=PublishRequest, result=PublishResponse)
    async def publish(self, params: PublishRequest, ctx: OperationContext) -> PublishResponse:
        if not params.topic:
            raise InvalidArgument("topic must not be empty")
        sequence = self._broker.publish(params.topic, params.payload, params.headers)
        return PublishResponse(sequence=sequence)

    @stream_operation("subscribe", params=SubscribeRequest, result=Message)
    async def subscribe(self, params: SubscribeRequest, stream: OperationStream) -> None:
        if not params.topic:
            raise InvalidArgument("topic must not be empty")
        if self._broker.closed:
            raise Unavailable("memstore is shutting down")
        try:
            with self._broker.subscribe(params.topic) as subscription:
                self.metrics.connections_active = self._broker.subscribers
                while (message := await subscription.next()) is not None:
                    await stream.send(message)
        finally:
            self.metrics.connections_active = self._broker.subscribers
        if subscription.ended == "overflow":
            raise ResourceExhausted(
                f"subscriber to {params.topic!r} fell more than {self._broker.buffer} messages "
                "behind and was disconnected"
            )
        raise Unavailable("memstore is shutting down")
