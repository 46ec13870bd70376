"""Topic fan-out for memstore's publish/subscribe.

Publishing never waits, and its cost does not depend on what subscribers do: each published
message becomes one ``SharedResult`` (encoded once, on first use, for every subscriber), and is
appended to each subscriber's bounded queue, waking the subscriber if it waits: at once, or, with
a delivery interval, from the broker's own task at most once per interval (``Broker.run``), so
that under load one wake-up of a subscriber (and one write per client connection) carries every
message queued by then instead of one each; the publisher then never wakes anybody. The interval
only holds back a busy broker: a message published when nothing was delivered for a whole
interval goes out at once. A subscriber
whose queue is full when a message arrives is cut off at once: its queue is dropped, the send it
may be blocked in (a client that does not read) is cancelled, and its stream ends with
RESOURCE_EXHAUSTED. A slow reader therefore never slows the publisher or the other subscribers,
never loses a message silently, and stops costing anything the moment it is cut — the same
policy as Redis's pub/sub output buffer limit. Messages published while nobody is subscribed to
their topic go nowhere.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import trio

from prism._proto.prism.data.v1 import Message
from prism.sdk import SharedResult

__all__ = ["Broker", "Subscription"]


class Subscription:
    """One subscriber's messages: those published since it began, at most the broker's buffer
    of them waiting (plus the one being sent)."""

    __slots__ = ("_queue", "_scope", "_waiter", "ended", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        #: Why the broker ended the subscription: None (still on), "overflow", "closed" or
        #: "left".
        self.ended: str | None = None
        self._queue: collections.deque[SharedResult] = collections.deque()
        # The subscriber's task while it waits in `next`. Parked and woken with Trio's
        # low-level calls rather than an Event per wait: one publish wakes every subscriber,
        # and an Event (with its parking lot) costs several times as much per wake-up.
        self._waiter: trio.lowlevel.Task | None = None
        self._scope = trio.CancelScope()

    @property
    def backlog(self) -> int:
        """Messages waiting to be taken."""
        return len(self._queue)

    async def next(self) -> SharedResult | None:
        """The next message, waiting for one; None once the subscription has ended and nothing
        is left (a closed broker lets the queue drain; a cut-off subscriber has none left). Not
        a checkpoint when a message is waiting: the send that follows is one."""
        queue = self._queue
        while not queue:
            if self.ended is not None:
                await trio.lowlevel.checkpoint()
                return None
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        return queue.popleft()

    def _abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._waiter = None  # cancelled while waiting: nobody may reschedule it any more
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)


class _Topic:
    __slots__ = ("sequence", "subscribers")

    def __init__(self) -> None:
        # A dict, not a set: publishing visits subscribers in the order they came.
        self.subscribers: dict[Subscription, None] = {}
        self.sequence = 0


class Broker:
    """Topics exist while they have subscribers; their sequence numbers start at 1 then.

    ``interval`` (seconds, 0 = none): how long a message may wait before its subscribers are
    woken, when ``run`` runs (start it in a task for the broker's lifetime); without ``run``,
    ``publish`` wakes them at once."""

    def __init__(self, buffer: int, interval: float = 0.0) -> None:
        self.buffer = buffer
        self.interval = interval
        self._topics: dict[str, _Topic] = {}
        self._closed = False
        # With an interval: the topics published to since subscribers were last woken, and
        # the task that wakes them (None while it is not running; parked while none).
        self._published: dict[_Topic, None] = {}
        self._waker: trio.lowlevel.Task | None = None
        self._waker_parked = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake the subscribers of the topics published to at most once per ``interval``
        seconds: at once when the last wake-up is an interval or more ago (a quiet broker adds
        no latency), else when the interval since it has passed (a busy one batches). Runs until
        cancelled; then ``publish`` wakes subscribers itself again, and what was pending is
        woken at once."""
        if self._waker is not None:
            raise RuntimeError("the broker's waker is already running")
        self._waker = trio.lowlevel.current_task()
        task_status.started()
        interval = self.interval
        last_wake = -math.inf
        try:
            while True:
                if not self._published:
                    self._waker_parked = True
                    await trio.lowlevel.wait_task_rescheduled(self._unpark)
                # Only reached after parking (a wake-up leaves nothing published), so the loop
                # always yields at least once per round.
                due = last_wake + interval
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                published, self._published = self._published, {}
                _wake_waiting(published)
                last_wake = trio.current_time()
        finally:
            self._waker = None
            self._waker_parked = False
            _wake_waiting(self._published)
            self._published = {}

    def _unpark(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._waker_parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def subscribers(self) -> int:
        return sum(len(topic.subscribers) for topic in self._topics.values())

    def publish(self, topic: str, payload: bytes, headers: Mapping[str, str]) -> int:
        """Queue the message for the topic's current subscribers, cutting off those whose queue
        is full; returns its sequence number (0 when nobody was subscribed). Never waits."""
        state = self._topics.get(topic)
        if state is None:
            return 0
        state.sequence += 1
        # One message, and one encoding of it, for every subscriber: never mutated from here.
        shared = SharedResult(
            Message(topic=topic, payload=payload, headers=dict(headers), sequence=state.sequence)
        )
        limit = self.buffer
        # The interval batches, it must not cut off a subscriber that keeps up: one whose queue
        # is half full is woken now (a fast publisher with a small buffer), interval or not.
        urgent = limit // 2
        pressed = False
        full: list[Subscription] = []
        for subscription in state.subscribers:
            queue = subscription._queue
            backlog = len(queue)
            if backlog >= limit:
                full.append(subscription)
                continue
            queue.append(shared)
            if backlog >= urgent:
                pressed = True
        waker = self._waker
        if waker is None or pressed:
            _wake_waiting((state,))
        else:
            self._published[state] = None
            if self._waker_parked:
                self._waker_parked = False
                trio.lowlevel.reschedule(waker)
        for subscription in full:
            self._end(subscription, "overflow")
        return state.sequence

    @contextmanager
    def subscribe(self, topic: str) -> Iterator[Subscription]:
        """A subscription for the duration of the block. The block is cancelled when the
        subscriber is cut off for falling behind (``ended == "overflow"`` then); a closed broker
        only ends the subscription (``next`` returns None once the queue is drained). Raises
        ``RuntimeError`` once the broker is closed."""
        if self._closed:
            raise RuntimeError("broker closed")
        subscription = Subscription(topic)
        self._topics.setdefault(topic, _Topic()).subscribers[subscription] = None
        try:
            with subscription._scope:
                yield subscription
        finally:
            self._end(subscription, subscription.ended or "left")

    def close(self) -> None:
        """End every subscription (their queues drain, then end) and refuse new ones."""
        self._closed = True
        for state in list(self._topics.values()):
            for subscription in list(state.subscribers):
                self._end(subscription, "closed")

    def _end(self, subscription: Subscription, reason: str) -> None:
        state = self._topics.get(subscription.topic)
        if state is None or subscription not in state.subscribers:
            return
        subscription.ended = reason
        del state.subscribers[subscription]
        if not state.subscribers:
            del self._topics[subscription.topic]
        if reason == "overflow":
            # Cut off at once: what it had not taken is dropped, and a send blocked on a client
            # that does not read is abandoned, instead of delivering the backlog first.
            subscription._queue.clear()
            subscription._scope.cancel()
        subscription._wake()


def _wake_waiting(topics: Iterable[_Topic]) -> None:
    for state in topics:
        for subscription in state.subscribers:
            if subscription._waiter is not None:
                subscription._wake()
