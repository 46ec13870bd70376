"""nats: core publish/subscribe (contract "pubsub") and the JetStream log/queue (contract "log").

nats-py objects live on an asyncio loop of their own (``aio``); the operations below are Trio
code handing it coroutines. Names: ``names``. The consume loop: ``log``.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import nats
import nats.errors
import nats.js.api
import nats.js.errors
import trio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    LogRecord,
    Message,
    ProduceRequest,
    ProduceResponse,
    PublishRequest,
    PublishResponse,
    SubscribeRequest,
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
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    operation,
    stream_operation,
)
from prism_plugin_nats import log
from prism_plugin_nats._proto.prism.plugins.nats.v1 import NatsConfig
from prism_plugin_nats.aio import AsyncioLoop
from prism_plugin_nats.log import KEY_HEADER
from prism_plugin_nats.names import escape, is_auth_error, status_of, valid_prefix

__all__ = ["NatsPlugin"]

SEQUENCE_HEADER = "Prism-Seq"
RESERVED_HEADER_PREFIX = "prism-"
DEFAULT_PORT = 4222
DEFAULT_CONNECT_TIMEOUT_MS = 5000
DEFAULT_REQUEST_TIMEOUT_MS = 10_000
DEFAULT_ACK_WAIT_MS = 30_000
DEFAULT_MAX_IN_FLIGHT = 100
DEFAULT_MAX_IN_FLIGHT_LIMIT = 10_000
DEFAULT_FETCH_WAIT_MS = 1000
DEFAULT_SUBSCRIBER_BUFFER = 1024
CLOSE_GRACE = 5.0  # seconds for nats-py to flush and close at shutdown


def _user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    for name in headers:
        if not name or name.lower().startswith(RESERVED_HEADER_PREFIX):
            raise InvalidArgument(f"header {name!r}: empty, or reserved (Prism-*) for the plugin")
    return dict(headers)


class NatsPlugin(BackendPlugin):
    name = "nats"
    version = "0.1.0"
    config_type = NatsConfig
    config_required = False  # a local server on the default port

    def __init__(self) -> None:
        super().__init__()
        self.loop: AsyncioLoop | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self.config = NatsConfig()
        self._streams: set[str] = set()  # streams known to exist
        self._sequences: defaultdict[str, itertools.count[int]] = defaultdict(
            lambda: itertools.count(1)
        )
        self._subscriptions: set[trio.CancelScope] = set()
        self._closing = False
        # Subscription ids nats-py dropped a message of (its pending queue was full): added on
        # the asyncio thread by `_on_error`, read on Trio's (a set's add is atomic).
        self._overflowed: set[int] = set()

    # -- lifetime ------------------------------------------------------------------------------

    async def initialize(
        self, config: NatsConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        for field in (
            "port", "connect_timeout_ms", "request_timeout_ms", "max_age_ms", "ack_wait_ms",
            "default_max_in_flight", "max_in_flight_limit", "fetch_wait_ms", "subscriber_buffer",
        ):  # fmt: skip
            if getattr(config, field) < 0:
                raise InvalidArgument(f"config field {field!r} must not be negative")
        if config.port > 65535:
            raise InvalidArgument("config field 'port' must be at most 65535")
        config.subject_prefix = valid_prefix(
            "subject_prefix", config.subject_prefix or "prism", dots=True
        )
        config.stream_prefix = valid_prefix(
            "stream_prefix", config.stream_prefix or "prism-", dots=False
        )
        config.client_name = config.client_name or "prism"
        self.config = config
        if self.max_in_flight_default > self.max_in_flight_limit:
            raise InvalidArgument("config field 'default_max_in_flight' exceeds the limit")
        user, password = credentials.get("username", ""), credentials.get("password", "")
        if not config.anonymous and not (user and password):
            raise InvalidArgument(
                "missing required credential 'username' and 'password' (set config "
                "'anonymous: true' for a server without authorization)"
            )
        self.loop = AsyncioLoop(f"nats-{namespace}", "NATS")
        self.loop.start()
        options: dict[str, Any] = {
            "servers": [f"nats://{config.host or '127.0.0.1'}:{config.port or DEFAULT_PORT}"],
            "name": config.client_name,
            "connect_timeout": (config.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS) / 1000,
            # While connecting: two tries, so a refusal or no server fails Initialize at once
            # (nats-py would otherwise retry the initial connect 60 times, 2 s apart; 0 would
            # mean forever).
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "error_cb": self._on_error,
            "disconnected_cb": _ignore,
            "closed_cb": _ignore,
            "reconnected_cb": _ignore,
        }
        if not config.anonymous:
            options.update(user=user, password=password)
        try:
            self._nc = await self.loop.run(_connect, options)
        except BaseException as exc:
            await self.loop.stop()
            if isinstance(exc, Exception):
                raise status_of(exc, "connecting to NATS") from None
            raise
        self._js = self._nc.jetstream(timeout=self.request_timeout)

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's error callback, on the asyncio thread. A slow consumer error means it
        dropped a message of that subscription: the subscriber is cut off (RESOURCE_EXHAUSTED)
        before it reads anything more, rather than shown a gap. Other errors are read from the
        client's state (``is_connected``, ``last_error``)."""
        if isinstance(exc, nats.errors.SlowConsumerError):
            self._overflowed.add(exc.sid)

    @property
    def subscriber_buffer(self) -> int:
        return self.config.subscriber_buffer or DEFAULT_SUBSCRIBER_BUFFER

    @property
    def request_timeout(self) -> float:
        return (self.config.request_timeout_ms or DEFAULT_REQUEST_TIMEOUT_MS) / 1000

    @property
    def max_in_flight_default(self) -> int:
        return self.config.default_max_in_flight or DEFAULT_MAX_IN_FLIGHT

    @property
    def max_in_flight_limit(self) -> int:
        return self.config.max_in_flight_limit or DEFAULT_MAX_IN_FLIGHT_LIMIT

    @property
    def fetch_wait(self) -> float:
        return (self.config.fetch_wait_ms or DEFAULT_FETCH_WAIT_MS) / 1000

    @property
    def ack_wait(self) -> float:
        return (self.config.ack_wait_ms or DEFAULT_ACK_WAIT_MS) / 1000

    def connected(self) -> tuple[AsyncioLoop, NatsClient, JetStreamContext]:
        """The client, or the status of why there is none: UNAUTHENTICATED when the server
        dropped the connection and refuses the credentials on reconnect (rotated or revoked),
        UNAVAILABLE while it cannot be reached."""
        if self.loop is None or self._nc is None or self._js is None:
            raise Unavailable("the nats plugin is not connected")
        nc = self._nc
        if not nc.is_connected:
            if is_auth_error(nc.last_error):
                raise Unauthenticated("the NATS server refused the credentials")
            raise Unavailable("the NATS server cannot be reached (reconnecting)")
        return self.loop, nc, self._js

    async def health(self) -> HealthReport:
        """HEALTHY when the server answers a flush (PING/PONG); DEGRADED while it cannot be
        reached (nats-py reconnects by itself); UNHEALTHY when it refuses the credentials."""
        url = self._nc.connected_url if self._nc is not None else None
        details = {"server": url.netloc if url is not None else ""}
        try:
            loop, nc, _ = self.connected()
            await loop.run(nc.flush, self.request_timeout)
        except Unauthenticated as exc:
            return HealthReport(HealthStatus.UNHEALTHY, exc.message, details)
        except GrpcError as exc:
            return HealthReport(HealthStatus.DEGRADED, exc.message, details)
        except Exception as exc:
            return HealthReport(HealthStatus.DEGRADED, status_of(exc, "flush").message, details)
        return HealthReport(details=details)

    def begin_shutdown(self) -> None:
        # Subscriptions and consume streams never end on their own: end them now (UNAVAILABLE,
        # so clients come back to the next instance; unacknowledged records are handed back).
        self._closing = True
        for scope in self._subscriptions:
            scope.cancel()

    async def shutdown(self, grace_seconds: float) -> None:
        loop, nc = self.loop, self._nc
        self._nc = self._js = None
        if loop is None:
            return
        if nc is not None:
            with trio.move_on_after(min(grace_seconds, CLOSE_GRACE)):
                await loop.run(nc.close)
        await loop.stop()

    # -- names ---------------------------------------------------------------------------------

    def pubsub_subject(self, topic: str) -> str:
        return f"{self.config.subject_prefix}.pubsub.{escape('topic', topic)}"

    def log_names(self, topic: str) -> tuple[str, str]:
        """A log topic's (stream, subject)."""
        escaped = escape("topic", topic)
        return self.config.stream_prefix + escaped, f"{self.config.subject_prefix}.log.{escaped}"

    # -- pubsub: core NATS ---------------------------------------------------------------------

    @operation("publish", params=PublishRequest, result=PublishResponse)
    async def publish(self, params: PublishRequest, ctx: OperationContext) -> PublishResponse:
        subject = self.pubsub_subject(params.topic)
        headers = _user_headers(params.headers)
        loop, nc, _ = self.connected()
        sequence = next(self._sequences[subject])
        headers[SEQUENCE_HEADER] = str(sequence)
        try:
            await loop.run(nc.publish, subject, params.payload, headers=headers)
        except Exception as exc:
            raise status_of(exc, "publish") from None
        return PublishResponse(sequence=sequence)

    @stream_operation("subscribe", params=SubscribeRequest, result=Message)
    async def subscribe(self, params: SubscribeRequest, stream: OperationStream) -> None:
        subject = self.pubsub_subject(params.topic)
        loop, nc, _ = self.connected()
        if self._closing:
            raise Unavailable("the nats plugin is shutting down: subscribe again")
        buffer = self.subscriber_buffer
        try:
            subscription = await loop.run(nc.subscribe, subject, pending_msgs_limit=buffer)
        except Exception as exc:
            raise status_of(exc, "subscribe") from None
        sid = subscription._id
        with trio.CancelScope() as scope:
            self._subscriptions.add(scope)
            try:
                while True:
                    if sid in self._overflowed:
                        raise ResourceExhausted(
                            f"subscriber to {params.topic!r} fell more than {buffer} messages "
                            "behind and was disconnected"
                        )
                    try:
                        msg = await loop.run(subscription.next_msg, None)
                    except Exception as exc:
                        raise status_of(exc, "subscription") from None
                    headers = dict(msg.headers or {})
                    sequence = int(headers.pop(SEQUENCE_HEADER, "0") or 0)
                    await stream.send(
                        Message(
                            topic=params.topic,
                            payload=msg.data,
                            headers=headers,
                            sequence=sequence,
                        )
                    )
            finally:
                self._subscriptions.discard(scope)
                self._overflowed.discard(sid)
                loop.call_soon(_unsubscribe_soon, subscription)
        raise Unavailable("the nats plugin shut down: subscribe again")

    # -- log: JetStream ------------------------------------------------------------------------

    async def stream_for(self, topic: str) -> tuple[str, str]:
        """The topic's (stream, subject), creating the stream unless configured not to."""
        name, subject = self.log_names(topic)
        if name in self._streams:
            return name, subject
        loop, _, js = self.connected()
        try:
            try:
                await loop.run(js.stream_info, name)
            except nats.js.errors.NotFoundError:
                if self.config.no_create_streams:
                    raise NotFound(f"topic {topic!r} has no JetStream stream") from None
                storage = (
                    nats.js.api.StorageType.MEMORY
                    if self.config.memory_storage
                    else nats.js.api.StorageType.FILE
                )
                stream_config = nats.js.api.StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=storage,
                    max_age=self.config.max_age_ms / 1000 if self.config.max_age_ms else None,
                )
                await loop.run(js.add_stream, stream_config)
        except Exception as exc:
            raise status_of(exc, f"topic {topic!r}") from None
        self._streams.add(name)
        return name, subject

    @operation("produce", params=ProduceRequest, result=ProduceResponse)
    async def produce(self, params: ProduceRequest, ctx: OperationContext) -> ProduceResponse:
        headers = _user_headers(params.headers)
        if params.key:
            headers[KEY_HEADER] = params.key
        name, subject = await self.stream_for(params.topic)
        loop, _, js = self.connected()
        try:
            ack = await loop.run(js.publish, subject, params.value, headers=headers or None)
        except Exception as exc:
            self._streams.discard(name)  # deleted behind our back? look again next time
            raise status_of(exc, "produce") from None
        return ProduceResponse(partition=0, offset=ack.seq)

    @stream_operation("consume", params=ConsumeRequest, result=LogRecord, inbound=ConsumeAck)
    async def consume(self, params: ConsumeRequest, stream: OperationStream) -> None:
        group = escape("group", params.group) if params.group else ""
        if not group:
            raise InvalidArgument("consume needs a consumer group ('group')")
        limit = params.max_in_flight or self.max_in_flight_default
        if not 0 < limit <= self.max_in_flight_limit:
            raise InvalidArgument(
                f"max_in_flight must be between 1 and {self.max_in_flight_limit}, not {limit}"
            )
        if self._closing:
            raise Unavailable("the nats plugin is shutting down: consume again")
        name, subject = await self.stream_for(params.topic)
        loop, _, js = self.connected()
        consumer_config = nats.js.api.ConsumerConfig(
            durable_name=group,
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            filter_subject=subject,
        )
        try:
            subscription = await loop.run(
                js.pull_subscribe, subject, durable=group, stream=name, config=consumer_config
            )
        except Exception as exc:
            raise status_of(exc, f"consumer group {params.group!r}") from None
        with trio.CancelScope() as scope:
            self._subscriptions.add(scope)
            try:
                await log.Consumer(loop, subscription, params.topic, limit, self.fetch_wait).run(
                    stream
                )
            finally:
                self._subscriptions.discard(scope)
        if scope.cancelled_caught:
            raise Unavailable("the nats plugin shut down: consume again")


async def _connect(options: dict[str, Any]) -> NatsClient:
    nc = await nats.connect(**options)
    # Connected and authenticated: from now on, reconnect by itself after a lost connection
    # (calls fail with UNAVAILABLE, or UNAUTHENTICATED when the server refuses the
    # credentials, meanwhile).
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 0.5
    return nc


async def _ignore(*args: object) -> None:
    """nats-py logs what it is not given a callback for; the plugin reads the client's state
    (``is_connected``, ``last_error``) instead."""


def _unsubscribe_soon(subscription: Any) -> None:
    import asyncio

    task = asyncio.ensure_future(subscription.unsubscribe())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
