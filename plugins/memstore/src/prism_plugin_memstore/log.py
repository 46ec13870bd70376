"""memstore's log/queue contract (``log``): topics of partitions in memory, consumer groups with
explicit acknowledgements, at least once.

A topic has ``partitions`` partitions (a key always hashes to the same one, with CRC-32, so its
records keep their order; records without a key go round-robin). Each partition keeps its last
``retention`` records; older ones are dropped (a group that had not read them skips them, as a
Kafka consumer does past a topic's retention).

A group hands each record to one member at a time, JetStream-style (any member takes the next
available record, at most ``max_in_flight`` unacknowledged each), rather than assigning whole
partitions to members as Kafka does: with one partition (the default) the group's members
still share the work. What a member's stream delivered and did not acknowledge goes back to
the group when the stream ends, however it ends, and is delivered again first, in (partition,
offset) order, with its delivery count raised. Nothing survives the plugin instance: a plugin
restart forgets every topic and group (memstore is in-memory by design).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import zlib
from collections import deque
from collections.abc import Mapping

import trio

from prism._proto.prism.data.v1 import ConsumeAck, LogRecord
from prism.sdk import InvalidArgument, OperationStream
from prism.sdk.consume import Position, acknowledged

__all__ = ["Consumer", "Group", "Log", "Topic"]


class _Partition:
    __slots__ = ("base", "records")

    def __init__(self) -> None:
        self.records: deque[LogRecord] = deque()
        self.base = 0  # the offset of records[0]

    @property
    def end(self) -> int:
        """The offset the next record gets."""
        return self.base + len(self.records)

    def get(self, offset: int) -> LogRecord | None:
        index = offset - self.base
        return self.records[index] if 0 <= index < len(self.records) else None


class Group:
    """Where a consumer group stands in one topic: per partition, the first offset never handed
    to a member, and the records handed back (a heap of positions)."""

    __slots__ = ("cursors", "deliveries", "handed_back")

    def __init__(self, partitions: int) -> None:
        self.cursors = [0] * partitions
        self.handed_back: list[Position] = []
        #: Deliveries of the records delivered more than once and not yet acknowledged.
        self.deliveries: dict[Position, int] = {}


class Topic:
    __slots__ = ("_round_robin", "changed", "groups", "name", "partitions", "retention")

    def __init__(self, name: str, partitions: int, retention: int) -> None:
        self.name = name
        self.partitions = [_Partition() for _ in range(partitions)]
        self.retention = retention
        self.groups: dict[str, Group] = {}
        #: Set (and replaced) when records arrive or are handed back: waiting members look.
        self.changed = trio.Event()
        self._round_robin = itertools.cycle(range(partitions))

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def produce(self, key: str, value: bytes, headers: Mapping[str, str]) -> Position:
        count = len(self.partitions)
        index = zlib.crc32(key.encode()) % count if key else next(self._round_robin)
        partition = self.partitions[index]
        offset = partition.end
        partition.records.append(
            LogRecord(
                topic=self.name,
                partition=index,
                offset=offset,
                key=key,
                value=value,
                headers=dict(headers),
            )
        )
        if len(partition.records) > self.retention:
            partition.records.popleft()
            partition.base += 1
        self._notify()
        return index, offset

    def group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(len(self.partitions))
        return group

    def take(self, group: Group, count: int) -> list[LogRecord]:
        """Up to ``count`` records for a member of ``group``: those handed back first, then
        new ones, a partition at a time in turn. Each is the member's until acknowledged or
        handed back."""
        taken: list[LogRecord] = []
        while group.handed_back and len(taken) < count:
            position = heapq.heappop(group.handed_back)
            record = self.partitions[position[0]].get(position[1])
            if record is None:  # dropped by retention meanwhile
                group.deliveries.pop(position, None)
                continue
            delivered = group.deliveries.get(position, 1) + 1
            group.deliveries[position] = delivered
            taken.append(_delivery(record, delivered))
        cursors = group.cursors
        while len(taken) < count:
            before = len(taken)
            for index, partition in enumerate(self.partitions):
                cursor = max(cursors[index], partition.base)
                if cursor < partition.end and len(taken) < count:
                    record = partition.get(cursor)
                    assert record is not None
                    taken.append(_delivery(record, 1))
                    cursor += 1
                cursors[index] = cursor
            if len(taken) == before:
                break
        return taken

    def hand_back(self, group: Group, positions: list[Position]) -> None:
        if positions:
            for position in positions:
                heapq.heappush(group.handed_back, position)
            self._notify()


def _delivery(record: LogRecord, count: int) -> LogRecord:
    # The stored record is shared by every group: each delivery is its own message.
    return dataclasses.replace(record, delivery_count=count)


class Log:
    """Every topic of one memstore instance."""

    def __init__(self, partitions: int, retention: int) -> None:
        self.partitions = partitions
        self.retention = retention
        self.topics: dict[str, Topic] = {}
        self.closed = False

    def topic(self, name: str) -> Topic:
        if not name:
            raise InvalidArgument("topic must not be empty")
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(name, self.partitions, self.retention)
        return topic

    def close(self) -> None:
        """Refuse new consume streams (the plugin cancels those under way)."""
        self.closed = True


class Consumer:
    """One consume stream: a member of ``group`` holding at most ``limit`` records."""

    def __init__(self, log: Log, topic: Topic, group: Group, limit: int) -> None:
        self.log = log
        self.topic = topic
        self.group = group
        self.limit = limit
        self.delivered: dict[Position, None] = {}
        self._room = trio.Event()

    async def run(self, stream: OperationStream) -> None:
        """Deliver until the client half-closes (then return, its acknowledgements applied),
        an error, cancellation or shutdown; always hand back what is unacknowledged."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver, stream)
                await self._acknowledge(stream)
                nursery.cancel_scope.cancel()
        finally:
            self.hand_back()

    def hand_back(self) -> None:
        """Give the group back what this stream delivered and was not acknowledged for."""
        self.topic.hand_back(self.group, sorted(self.delivered))
        self.delivered.clear()

    async def _deliver(self, stream: OperationStream) -> None:
        while True:
            room = self.limit - len(self.delivered)
            if room <= 0:
                self._room = trio.Event()
                await self._room.wait()
                continue
            changed = self.topic.changed
            records = self.topic.take(self.group, room)
            if not records:
                await changed.wait()
                continue
            for record in records:
                self.delivered[record.partition, record.offset] = None
            for record in records:
                await stream.send(record)

    async def _acknowledge(self, stream: OperationStream) -> None:
        async for request in stream:
            assert isinstance(request, ConsumeAck)
            for position in acknowledged(request, self.delivered):
                del self.delivered[position]
                self.group.deliveries.pop(position, None)
            self._room.set()
