"""Typed helpers for the publish/subscribe contract (``prism.data.v1``'s pubsub.proto)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prism._proto.prism.data.v1 import (
    Message as MessageProto,
)
from prism._proto.prism.data.v1 import (
    PublishRequest,
    PublishResponse,
    SubscribeRequest,
)
from prism.client._envelope import decode_stream_response
from prism.client.stream import OperationStream

if TYPE_CHECKING:
    from prism.client.client import Client

__all__ = ["Message", "PubSub"]


@dataclass(frozen=True, slots=True)
class Message:
    """A message a subscription received. ``sequence`` increases by one per message published
    on the topic (per backend instance): a gap means messages were lost (e.g. while
    resubscribing); 0 when the backend numbers none."""

    topic: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    sequence: int = 0


def _message(response: bytes) -> tuple[Message | None, bool]:
    proto, final = decode_stream_response(response, MessageProto)
    if proto is None:
        return None, final
    return Message(proto.topic, proto.payload, dict(proto.headers), proto.sequence), final


class PubSub:
    """Publish and subscribe on one namespace: ``ps = client.pubsub("kv")``."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<prism.client.PubSub {self.namespace!r}>"

    def with_timeout(self, timeout: float | None) -> PubSub:
        """The same namespace, each ``publish`` bounded by ``timeout`` seconds
        (``DeadlineExceeded``); subscriptions keep their own ``timeout=``."""
        return PubSub(self.client.with_timeout(timeout), self.namespace)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Publish to the topic's current subscribers; returns the message's sequence number
        (0 when the backend numbers none, or — memstore — when nobody was subscribed)."""
        request = PublishRequest(topic=topic, payload=payload, headers=dict(headers or {}))
        response = await self.client.execute(self.namespace, "publish", request, PublishResponse)
        sequence: int = response.sequence
        return sequence

    def subscribe(self, topic: str, *, timeout: float | None = None) -> OperationStream[Message]:
        """The messages published to ``topic`` after the subscription started, as they come::

            async for message in ps.subscribe("news"):
                ...

        The subscription lasts until the loop is left (``break``, an exception, a
        cancellation; ``async with ps.subscribe(...) as messages:`` leaves it at the end of the
        block), which cancels the call so the backend drops the subscriber at once. It ends
        with the backend's error: ``ResourceExhausted`` for a subscriber that fell too far
        behind, ``Unavailable`` when the plugin shut down or reloaded (subscribe again).
        ``timeout`` bounds the whole subscription (usually: leave it None).
        """
        return self.client._stream(
            self.namespace, "subscribe", SubscribeRequest(topic=topic), _message, timeout=timeout
        )
