"""kafka: the log/queue contract ("log") on Kafka, with aiokafka.

aiokafka objects live on an asyncio loop of their own (``prism.sdk.aio``); the operations below
are Trio code handing it coroutines. Topic names: ``names``. Consumer groups: ``group``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiokafka.errors
import trio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    LogRecord,
    ProduceRequest,
    ProduceResponse,
)
from prism.sdk import (
    BackendPlugin,
    GrpcError,
    HealthReport,
    HealthStatus,
    InvalidArgument,
    NotFound,
    OperationContext,
    OperationStream,
    Unavailable,
    operation,
    stream_operation,
)
from prism.sdk.aio import AsyncioLoop
from prism_plugin_kafka._proto.prism.plugins.kafka.v1 import KafkaConfig
from prism_plugin_kafka.group import CLOSE_GRACE, Group
from prism_plugin_kafka.names import escape, status_of, valid_prefix

__all__ = ["KafkaPlugin"]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
DEFAULT_MAX_IN_FLIGHT = 100
DEFAULT_MAX_IN_FLIGHT_LIMIT = 10_000
DEFAULT_MAX_BUFFERED = 1000
DEFAULT_FETCH_WAIT_MS = 500
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_IDLE_GROUP_MS = 10_000
DEFAULT_GROUP_ID_FORMAT = "{group}.{topic}"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS


class KafkaPlugin(BackendPlugin):
    name = "kafka"
    version = "0.1.0"
    config_type = KafkaConfig
    config_required = False  # a local broker on the default port

    def __init__(self) -> None:
        super().__init__()
        self.loop: AsyncioLoop | None = None
        self.config = KafkaConfig()
        self._client: dict[str, Any] = {}  # options common to producer, consumers, admin
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: set[str] = set()  # Kafka topics known to exist
        self._groups: dict[tuple[str, str], Group] = {}
        self._closing = False

    # -- lifetime --------------------------------------------------------------------------------

    async def initialize(
        self, config: KafkaConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        for name in (
            "partitions", "replication_factor", "request_timeout_ms", "linger_ms",
            "default_max_in_flight", "max_in_flight_limit", "max_buffered_records",
            "fetch_wait_ms", "session_timeout_ms", "idle_group_ms",
        ):  # fmt: skip
            if getattr(config, name) < 0:
                raise InvalidArgument(f"config field {name!r} must not be negative")
        config.topic_prefix = valid_prefix(config.topic_prefix)
        config.group_id_format = config.group_id_format or DEFAULT_GROUP_ID_FORMAT
        try:
            config.group_id_format.format(group="g", topic="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidArgument(
                "config field 'group_id_format': only {group} and {topic} may be used"
            ) from exc
        if "{group}" not in config.group_id_format:
            raise InvalidArgument("config field 'group_id_format' must hold {group}")
        config.client_id = config.client_id or "prism"
        config.sasl_mechanism = (config.sasl_mechanism or "PLAIN").upper()
        if config.sasl_mechanism not in MECHANISMS:
            raise InvalidArgument(f"config field 'sasl_mechanism' must be one of {MECHANISMS}")
        servers = list(config.bootstrap_servers) or [DEFAULT_BOOTSTRAP]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgument(
                    f"config field 'bootstrap_servers': {server!r} is not host:port"
                )
        self.config = config
        if self.max_in_flight_default > self.max_in_flight_limit:
            raise InvalidArgument("config field 'default_max_in_flight' exceeds the limit")
        user, password = credentials.get("username", ""), credentials.get("password", "")
        if not config.anonymous and not (user and password):
            raise InvalidArgument(
                "missing required credential 'username' and 'password' (set config "
                "'anonymous: true' for a broker that needs no authentication)"
            )
        self._client = {
            "bootstrap_servers": servers,
            "client_id": config.client_id,
            "request_timeout_ms": config.request_timeout_ms or DEFAULT_REQUEST_TIMEOUT_MS,
        }
        protocol = "SSL" if config.tls else "PLAINTEXT"
        if config.tls:
            self._client["ssl_context"] = ssl.create_default_context()
        if not config.anonymous:
            protocol = "SASL_" + protocol
            self._client.update(
                sasl_mechanism=config.sasl_mechanism,
                sasl_plain_username=user,
                sasl_plain_password=password,
            )
        self._client["security_protocol"] = protocol
        self.loop = AsyncioLoop(f"kafka-{namespace}", "Kafka")
        self.loop.start()
        try:
            self._producer, self._admin = await self.loop.run(self._connect)
        except BaseException as exc:
            await self.loop.stop()
            if isinstance(exc, Exception):
                raise status_of(exc, "connecting to Kafka") from None
            raise

    async def _connect(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        producer = AIOKafkaProducer(**self._client, acks="all", linger_ms=self.config.linger_ms)
        admin = AIOKafkaAdminClient(**self._client)
        try:
            await producer.start()
            await admin.start()
        except BaseException:
            await producer.stop()
            await admin.close()
            raise
        return producer, admin

    @property
    def max_in_flight_default(self) -> int:
        return self.config.default_max_in_flight or DEFAULT_MAX_IN_FLIGHT

    @property
    def max_in_flight_limit(self) -> int:
        return self.config.max_in_flight_limit or DEFAULT_MAX_IN_FLIGHT_LIMIT

    def connected(self) -> tuple[AsyncioLoop, AIOKafkaProducer, AIOKafkaAdminClient]:
        if self.loop is None or self._producer is None or self._admin is None:
            raise Unavailable("the kafka plugin is not connected")
        return self.loop, self._producer, self._admin

    async def health(self) -> HealthReport:
        """HEALTHY when a broker answers a metadata request; DEGRADED while none does."""
        details = {"bootstrap_servers": ",".join(self._client.get("bootstrap_servers", ()))}
        try:
            loop, _, admin = self.connected()
            with trio.fail_after(self.config.request_timeout_ms / 1000 or 30):
                await loop.run(admin.describe_cluster)
        except GrpcError as exc:
            return HealthReport(HealthStatus.DEGRADED, exc.message, details)
        except Exception as exc:
            return HealthReport(HealthStatus.DEGRADED, status_of(exc, "metadata").message, details)
        return HealthReport(details=details)

    def begin_shutdown(self) -> None:
        # Consume streams never end on their own: end them now (UNAVAILABLE, so clients come
        # back to the next instance); their groups commit and leave.
        self._closing = True
        for group in self._groups.values():
            group.stop(Unavailable("the kafka plugin is shutting down: consume again"))

    async def shutdown(self, grace_seconds: float) -> None:
        loop, producer, admin = self.loop, self._producer, self._admin
        self._producer = self._admin = None
        if loop is None:
            return
        with trio.move_on_after(grace_seconds):
            for group in list(self._groups.values()):
                await group.closed.wait()
            if producer is not None:
                await loop.run(producer.stop)
            if admin is not None:
                await loop.run(admin.close)
        await loop.stop()

    # -- topics ----------------------------------------------------------------------------------

    async def topic_for(self, topic: str) -> str:
        """The Kafka topic of ``topic``, created unless configured not to."""
        name = escape(self.config.topic_prefix, topic)
        if name in self._topics:
            return name
        loop, _, admin = self.connected()
        try:
            if self.config.no_create_topics:
                # Not a metadata request naming the topic: brokers that auto-create topics
                # (Kafka's auto.create.topics.enable, Tansu always) create it on one.
                if name not in await loop.run(admin.list_topics):
                    raise NotFound(f"topic {topic!r} does not exist (Kafka topic {name!r})")
            else:
                new = NewTopic(
                    name, self.config.partitions or 1, self.config.replication_factor or 1
                )
                response = await loop.run(admin.create_topics, [new])
                for _, code, message in response.topic_errors:
                    if code not in (0, TOPIC_EXISTS):
                        error = aiokafka.errors.for_code(code)
                        raise error(message)
        except Exception as exc:
            raise status_of(exc, f"topic {topic!r}") from None
        self._topics.add(name)
        return name

    # -- log -------------------------------------------------------------------------------------

    @operation("produce", params=ProduceRequest, result=ProduceResponse)
    async def produce(self, params: ProduceRequest, ctx: OperationContext) -> ProduceResponse:
        for header in params.headers:
            if not header:
                raise InvalidArgument("a header name must not be empty")
        name = await self.topic_for(params.topic)
        loop, producer, _ = self.connected()
        headers = [(k, v.encode()) for k, v in params.headers.items()]
        try:
            metadata = await loop.run(
                producer.send_and_wait,
                name,
                params.value,
                key=params.key.encode() if params.key else None,
                headers=headers or None,
            )
        except Exception as exc:
            self._topics.discard(name)  # deleted behind our back? look again next time
            raise status_of(exc, "produce") from None
        return ProduceResponse(partition=metadata.partition, offset=metadata.offset)

    @stream_operation("consume", params=ConsumeRequest, result=LogRecord, inbound=ConsumeAck)
    async def consume(self, params: ConsumeRequest, stream: OperationStream) -> None:
        if not params.group:
            raise InvalidArgument("consume needs a consumer group ('group')")
        limit = params.max_in_flight or self.max_in_flight_default
        if not 0 < limit <= self.max_in_flight_limit:
            raise InvalidArgument(
                f"max_in_flight must be between 1 and {self.max_in_flight_limit}, not {limit}"
            )
        if self._closing:
            raise Unavailable("the kafka plugin is shutting down: consume again")
        name = await self.topic_for(params.topic)
        group = await self._group(params.topic, name, params.group)
        member = group.join(limit)
        try:
            await group.serve(member, stream)
        finally:
            group.leave(member)
            # Its acknowledgements are committed when the stream ends (a half-close's, at least).
            with trio.move_on_after(CLOSE_GRACE) as cleanup:
                cleanup.shield = True
                await group.flush()

    async def _group(self, topic: str, name: str, group_id: str) -> Group:
        """The (topic, group)'s consumer here, started when it has none (or its last member
        left and it is closing: then once it has closed, so its commits come first)."""
        key = (name, group_id)
        while True:
            group = self._groups.get(key)
            if group is None:
                break
            if not group.closing and group.error is None:
                return group
            await group.closed.wait()
            if self._groups.get(key) is group:
                del self._groups[key]
        loop, _, _ = self.connected()
        options = {
            **self._client,
            "group_id": self.config.group_id_format.format(group=group_id, topic=name),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": self.config.session_timeout_ms or DEFAULT_SESSION_TIMEOUT_MS,
        }
        group = Group(
            loop,
            options,
            topic,
            name,
            max_buffered=self.config.max_buffered_records or DEFAULT_MAX_BUFFERED,
            fetch_wait_ms=self.config.fetch_wait_ms or DEFAULT_FETCH_WAIT_MS,
            idle=(self.config.idle_group_ms or DEFAULT_IDLE_GROUP_MS) / 1000,
        )
        self._groups[key] = group
        try:
            await self.nursery.start(group.run)
        except BaseException:
            if self._groups.get(key) is group:
                del self._groups[key]
            raise
        return group
