"""Topic fan-out for memstore's publish/subscribe.

Publishing never waits: each subscriber has a bounded buffer, and a subscriber whose buffer is
full when a message arrives is disconnected (its stream ends with RESOURCE_EXHAUSTED after the
messages already buffered). A slow reader therefore never slows the publisher or the other
subscribers, and never loses a message silently — the same policy as Redis's pub/sub output
buffer limit. Messages published while nobody is subscribed to their topic go nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from prism._proto.prism.data.v1 import Message

__all__ = ["Broker", "Subscription"]


@dataclass(eq=False)
class Subscription:
    topic: str
    inbox: trio.MemoryReceiveChannel[Message]
    _outbox: trio.MemorySendChannel[Message]
    #: Why the broker ended the subscription: None (still on), "overflow" or "closed".
    ended: str | None = None


@dataclass
class _Topic:
    subscribers: set[Subscription] = field(default_factory=set)
    sequence: int = 0


class Broker:
    """Topics exist while they have subscribers; their sequence numbers start at 1 then."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def subscribers(self) -> int:
        return sum(len(topic.subscribers) for topic in self._topics.values())

    def publish(self, topic: str, payload: bytes, headers: Mapping[str, str]) -> int:
        """Deliver to the topic's current subscribers; returns the message's sequence number
        (0 when nobody was subscribed)."""
        state = self._topics.get(topic)
        if state is None:
            return 0
        state.sequence += 1
        # One message object for all subscribers: it is never mutated after this point.
        message = Message(
            topic=topic, payload=payload, headers=dict(headers), sequence=state.sequence
        )
        for subscription in list(state.subscribers):
            try:
                subscription._outbox.send_nowait(message)
            except trio.WouldBlock:
                self._end(subscription, "overflow")
        return state.sequence

    @contextmanager
    def subscribe(self, topic: str) -> Iterator[Subscription]:
        """A subscription for the duration of the block. Raises ``RuntimeError`` once closed."""
        if self._closed:
            raise RuntimeError("broker closed")
        outbox, inbox = trio.open_memory_channel[Message](self.buffer)
        subscription = Subscription(topic, inbox, outbox)
        self._topics.setdefault(topic, _Topic()).subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._end(subscription, subscription.ended or "left")
            inbox.close()

    def close(self) -> None:
        """End every subscription (their inboxes drain, then end) and refuse new ones."""
        self._closed = True
        for state in list(self._topics.values()):
            for subscription in list(state.subscribers):
                self._end(subscription, "closed")

    def _end(self, subscription: Subscription, reason: str) -> None:
        state = self._topics.get(subscription.topic)
        if state is None or subscription not in state.subscribers:
            return
        subscription.ended = reason
        subscription._outbox.close()
        state.subscribers.discard(subscription)
        if not state.subscribers:
            del self._topics[subscription.topic]
