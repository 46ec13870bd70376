"""memstore: an in-memory key-value store with TTLs, topic publish/subscribe, and a log with
consumer groups (``log``).

Nothing survives the instance: it is the proxy's embedded default and a reference plugin.
Time is ``trio.current_time()``, so tests drive TTLs with Trio's ``MockClock``.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    DeleteManyRequest,
    DeleteManyResponse,
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    ExpireRequest,
    ExpireResponse,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    LogRecord,
    Message,
    ProduceRequest,
    ProduceResponse,
    PublishRequest,
    PublishResponse,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    SubscribeRequest,
    TransactRequest,
    TransactResponse,
)
from prism.sdk import (
    BackendPlugin,
    HealthReport,
    InvalidArgument,
    KeyValueLimits,
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
from prism_plugin_memstore.kv import KeyValue
from prism_plugin_memstore.log import Consumer, Log
from prism_plugin_memstore.store import KeyValueStore

__all__ = ["MemstorePlugin"]

DEFAULT_SWEEP_INTERVAL_MS = 1000
DEFAULT_SUBSCRIBER_BUFFER = 1024
MAX_DELIVERY_INTERVAL_MS = 1000
DEFAULT_DELIVERY_INTERVAL_MS = 20
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
DEFAULT_LOG_PARTITIONS = 1
MAX_LOG_PARTITIONS = 64
DEFAULT_LOG_RETENTION = 10_000
DEFAULT_LOG_MAX_IN_FLIGHT = 100
MAX_LOG_IN_FLIGHT = 10_000


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
        self._kv = KeyValue(self._store, 0.0)
        self._broker = Broker(DEFAULT_SUBSCRIBER_BUFFER)
        self._log = Log(DEFAULT_LOG_PARTITIONS, DEFAULT_LOG_RETENTION)
        self._log_max_in_flight = DEFAULT_LOG_MAX_IN_FLIGHT
        self._consumers: set[trio.CancelScope] = set()

    async def initialize(
        self, config: MemstoreConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        _non_negative(
            config,
            "max_keys",
            "default_ttl_ms",
            "sweep_interval_ms",
            "subscriber_buffer",
            "log_partitions",
            "log_retention",
            "log_max_in_flight",
        )
        self.kv_limits = KeyValueLimits.from_config(
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            max_batch=config.max_batch,
        )
        self._store = KeyValueStore(config.max_keys)
        self._kv = KeyValue(self._store, config.default_ttl_ms / 1000)
        delivery_interval_ms = config.delivery_interval_ms
        if delivery_interval_ms is None:
            delivery_interval_ms = DEFAULT_DELIVERY_INTERVAL_MS
        if not 0 <= delivery_interval_ms <= MAX_DELIVERY_INTERVAL_MS:
            raise InvalidArgument(
                f"config field 'delivery_interval_ms' must be from 0 to {MAX_DELIVERY_INTERVAL_MS}"
            )
        if config.log_partitions > MAX_LOG_PARTITIONS:
            raise InvalidArgument(
                f"config field 'log_partitions' must be at most {MAX_LOG_PARTITIONS}"
            )
        if config.log_max_in_flight > MAX_LOG_IN_FLIGHT:
            raise InvalidArgument(
                f"config field 'log_max_in_flight' must be at most {MAX_LOG_IN_FLIGHT}"
            )
        self._log = Log(
            config.log_partitions or DEFAULT_LOG_PARTITIONS,
            config.log_retention or DEFAULT_LOG_RETENTION,
        )
        self._log_max_in_flight = config.log_max_in_flight or DEFAULT_LOG_MAX_IN_FLIGHT
        interval = delivery_interval_ms / 1000
        self._broker = Broker(config.subscriber_buffer or DEFAULT_SUBSCRIBER_BUFFER, interval)
        if interval:
            await self.nursery.start(self._broker.run)
        interval = (config.sweep_interval_ms or DEFAULT_SWEEP_INTERVAL_MS) / 1000
        self.nursery.start_soon(self._sweep_forever, interval)

    async def _sweep_forever(self, interval: float) -> None:
        # Expired keys are already invisible; this only gives their memory back.
        while True:
            await trio.sleep(interval)
            self._store.sweep(trio.current_time())

    async def health(self) -> HealthReport:
        return HealthReport(
            details={
                "keys": str(len(self._store)),
                "subscribers": str(self._broker.subscribers),
                "topics": str(len(self._log.topics)),
                "consumers": str(len(self._consumers)),
            }
        )

    def begin_shutdown(self) -> None:
        # Subscriptions never end on their own: end them now (UNAVAILABLE, so clients
        # resubscribe to the next instance) instead of waiting out the grace period.
        self._broker.close()
        self._log.close()
        for scope in self._consumers:
            scope.cancel()

    # -- key-value -----------------------------------------------------------------------------
    # The SDK has checked keys, values, shapes and features before a handler runs.

    @operation("get", params=GetRequest, result=GetResponse, features=("etag", "ttl"))
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        result = self._kv.read(params.key, trio.current_time())
        self._count(ctx, result.found)
        return result

    @operation("set", params=SetRequest, result=SetResponse, features=("etag", "ttl"))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        return SetResponse(etag=self._kv.write(params, trio.current_time()))

    @operation("delete", params=DeleteRequest, result=DeleteResponse, features=("etag",))
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse(deleted=self._kv.remove(params, trio.current_time()))

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        return ExistsResponse(exists=self._store.exists(params.key, trio.current_time()))

    @operation("expire", params=ExpireRequest, result=ExpireResponse)
    async def expire(self, params: ExpireRequest, ctx: OperationContext) -> ExpireResponse:
        now = trio.current_time()
        expires_at = None if params.persist else now + params.ttl_ms / 1000
        return ExpireResponse(found=self._store.expire(params.key, expires_at, now))

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        limit = min(params.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        keys, truncated = self._store.list_keys(
            params.prefix, params.start_after, limit, trio.current_time()
        )
        return ListKeysResponse(keys=keys, truncated=truncated)

    @operation("get_many", params=GetManyRequest, result=GetManyResponse, features=("etag", "ttl"))
    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        now = trio.current_time()
        items = [self._kv.read(key, now) for key in params.keys]
        for item in items:
            self._count(ctx, item.found)
        return GetManyResponse(items=items)

    @operation("set_many", params=SetManyRequest, result=SetManyResponse, features=("etag", "ttl"))
    async def set_many(self, params: SetManyRequest, ctx: OperationContext) -> SetManyResponse:
        now = trio.current_time()
        return SetManyResponse(results=[self._kv.item(item, now) for item in params.items])

    @operation(
        "delete_many", params=DeleteManyRequest, result=DeleteManyResponse, features=("etag",)
    )
    async def delete_many(
        self, params: DeleteManyRequest, ctx: OperationContext
    ) -> DeleteManyResponse:
        now = trio.current_time()
        return DeleteManyResponse(results=[self._kv.item(item, now) for item in params.items])

    @operation(
        "transact", params=TransactRequest, result=TransactResponse, features=("etag", "ttl")
    )
    async def transact(self, params: TransactRequest, ctx: OperationContext) -> TransactResponse:
        return TransactResponse(results=self._kv.transact(params, trio.current_time()))

    @staticmethod
    def _count(ctx: OperationContext, found: bool) -> None:
        if found:
            ctx.cache_hit()
        else:
            ctx.cache_miss()

    # Raw bytes, no protobuf: the key (and optional "ttl_ms") travel in the request metadata.

    @operation("set_raw", params=bytes, result=bytes)
    async def set_raw(self, params: bytes, ctx: OperationContext) -> bytes:
        ttl = ctx.metadata.get("ttl_ms", "0")
        try:
            ttl_ms = int(ttl)
        except ValueError:
            raise InvalidArgument(f"metadata 'ttl_ms' must be an integer, got {ttl!r}") from None
        if ttl_ms < 0:
            raise InvalidArgument("ttl_ms must not be negative")
        self.kv_limits.check_value(params)
        self._kv.write(
            SetRequest(key=self._raw_key(ctx), value=params, ttl_ms=ttl_ms), trio.current_time()
        )
        return b""

    @operation("get_raw", params=bytes, result=bytes)
    async def get_raw(self, params: bytes, ctx: OperationContext) -> bytes:
        key = self._raw_key(ctx)
        value = self._store.get(key, trio.current_time())
        self._count(ctx, value is not None)
        if value is None:
            raise NotFound(f"no key {key!r}")
        return value

    def _raw_key(self, ctx: OperationContext) -> str:
        key = ctx.metadata.get("key", "")
        if not key:
            raise InvalidArgument("metadata 'key' is required")
        self.kv_limits.check_key(key, "metadata 'key'")
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

    # -- log -----------------------------------------------------------------------------------

    @operation("produce", params=ProduceRequest, result=ProduceResponse)
    async def produce(self, params: ProduceRequest, ctx: OperationContext) -> ProduceResponse:
        self.kv_limits.check_value(params.value)
        partition, offset = self._log.topic(params.topic).produce(
            params.key, params.value, params.headers
        )
        return ProduceResponse(partition=partition, offset=offset)

    @stream_operation("consume", params=ConsumeRequest, result=LogRecord, inbound=ConsumeAck)
    async def consume(self, params: ConsumeRequest, stream: OperationStream) -> None:
        if not params.group:
            raise InvalidArgument("consume needs a consumer group ('group')")
        limit = params.max_in_flight or self._log_max_in_flight
        if not 0 < limit <= MAX_LOG_IN_FLIGHT:
            raise InvalidArgument(
                f"max_in_flight must be between 1 and {MAX_LOG_IN_FLIGHT}, not {limit}"
            )
        topic = self._log.topic(params.topic)
        if self._log.closed:
            raise Unavailable("memstore is shutting down: consume again")
        consumer = Consumer(self._log, topic, topic.group(params.group), limit)
        with trio.CancelScope() as scope:
            self._consumers.add(scope)
            try:
                await consumer.run(stream)
            finally:
                self._consumers.discard(scope)
        if scope.cancelled_caught:
            raise Unavailable("memstore shut down: consume again")
