"""A consumer group's member in this plugin instance, shared by the group's consume streams.

The plugin opens **one** aiokafka consumer per (topic, group) while at least one consume
stream of that group is open here: that consumer is one member of the Kafka group, and Kafka
spreads the topic's partitions across the members it knows (other plugin instances, other
applications). The streams of this instance then share the partitions Kafka gave it:

- A partition with records in flight (delivered, not acknowledged) belongs to the stream that
  holds them; its next records go to that stream only, so records of one key (one partition)
  reach one stream at a time, in order. A partition with nothing in flight may go to any
  stream with room; a stream takes at most its share of the instance's partitions
  (partitions / streams, rounded up), so the streams all get work.
- A stream holds at most ``max_in_flight`` records unacknowledged.
- Commits: Kafka keeps one committed offset per partition, so the plugin commits, per
  partition, the offset of the oldest record it fetched and has not seen acknowledged (or the
  next one, when every record fetched is acknowledged). A record acknowledged while an older
  one of its partition is not is therefore delivered again after a restart: at least once.
- When a stream ends, however it ends, the records it held unacknowledged are handed back: they
  go first to the group's streams here (those open, or the next to open). The consumer stays
  in the group ``idle_group_ms`` after its last stream ended (a stream that comes back soon
  finds it joined: no rebalance, which costs seconds); then it commits and leaves the group,
  so the next member (here, or anywhere) starts from the committed offsets and gets them
  again.
- When Kafka takes a partition away (a rebalance: a member joined or left), the plugin commits
  what was acknowledged of it and forgets its undelivered records; records of it still in
  flight here will be delivered again to the partition's new owner (acknowledging them here is
  accepted and changes nothing).

Kafka counts no deliveries: ``delivery_count`` is 0.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from prism._proto.prism.data.v1 import ConsumeAck, LogRecord
from prism.sdk import InvalidArgument, OperationStream, Unavailable
from prism.sdk.aio import AsyncioLoop
from prism_plugin_kafka.names import status_of

__all__ = ["Group", "Member"]

log = logging.getLogger("prism.plugin.kafka")

CLOSE_GRACE = 10.0  # seconds for the last commit and leaving the group


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


@dataclass(eq=False)
class Partition:
    """One assigned partition: what was fetched and not acknowledged, and who holds it."""

    number: int
    pending: deque[Any] = field(default_factory=deque)  # fetched, not delivered (in order)
    unacked: dict[int, None] = field(default_factory=dict)  # fetched offsets, in order
    fetched_to: int = -1  # the offset after the last record fetched; -1 = nothing yet
    committed: int = -1
    owner: Member | None = None
    held: int = 0  # records of it in flight at `owner`

    def commit_point(self) -> int:
        """The offset to commit: the oldest not acknowledged, or the next to fetch."""
        return next(iter(self.unacked), self.fetched_to)


@dataclass(eq=False)
class Member:
    """One consume stream: what it holds unacknowledged, by (partition, offset)."""

    limit: int
    delivered: dict[tuple[int, int], tuple[Partition, Any]] = field(default_factory=dict)

    @property
    def room(self) -> int:
        return self.limit - len(self.delivered)


class Group:
    """The consumer of one (topic, group) in this plugin instance and its members (streams).

    ``run`` (started in the plugin's nursery by the first member) owns the aiokafka consumer:
    it fetches while there is room in the buffer and commits what acknowledgements allow; it
    returns, having committed and left the group, once it has had no member for ``idle``
    seconds.
    """

    def __init__(
        self,
        loop: AsyncioLoop,
        consumer_options: dict[str, Any],
        topic: str,
        kafka_topic: str,
        *,
        max_buffered: int,
        fetch_wait_ms: int,
        idle: float,
    ) -> None:
        self.loop = loop
        self.options = consumer_options
        self.topic = topic
        self.kafka_topic = kafka_topic
        self.max_buffered = max_buffered
        self.fetch_wait_ms = fetch_wait_ms
        self.idle = idle  # seconds the consumer stays joined with no member
        self.members: list[Member] = []
        self.partitions: dict[int, Partition] = {}
        self.epochs: dict[int, int] = {}  # partition → times it was revoked
        self.error: BaseException | None = None
        self.closed = trio.Event()
        self.closing = False
        self._stopping = False
        self._changed = trio.Event()  # members: something to claim, or an error
        self._buffer_room = trio.Event()
        self._dirty = trio.Event()  # commits to make
        self._consumer: AIOKafkaConsumer | None = None
        self._rotation = itertools.count()

    # -- the consumer (its own task) -------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the consumer, then fetch and commit until the last member leaves; then commit
        and leave the group (within CLOSE_GRACE, shielded). Errors end every member's stream
        (UNAVAILABLE, or the error's status), never the plugin."""
        token = trio.lowlevel.current_trio_token()
        try:
            consumer = await self.loop.run(self._start_consumer, token)
        except Exception as exc:
            error = status_of(exc, f"consumer group of topic {self.topic!r}")
            self._fail(error)
            self.closed.set()
            raise error from None
        self._consumer = consumer
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fetch)
                nursery.start_soon(self._commit_loop)
                await self._linger()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            self._fail(exc)
        finally:
            with trio.move_on_after(CLOSE_GRACE) as cleanup:
                cleanup.shield = True
                with contextlib.suppress(Exception):
                    await self._commit()
                with contextlib.suppress(Exception):
                    await self.loop.run(consumer.stop)
            self._fail(Unavailable("the consumer group closed: consume again"))
            self.closed.set()

    async def _linger(self) -> None:
        """Return once the group has had no member for ``idle`` seconds (then ``closing``)."""
        while not self._stopping:
            if self.members:
                await self._changed.wait()
                continue
            with trio.move_on_after(self.idle):
                while not self.members and not self._stopping:
                    await self._changed.wait()
            if not self.members:
                break
        self.closing = True

    async def _start_consumer(self, token: trio.lowlevel.TrioToken) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(**self.options)
        consumer.subscribe([self.kafka_topic], listener=_Listener(self, token))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    def stop(self, why: BaseException) -> None:
        """End every member's stream with ``why`` and close now (the plugin shuts down)."""
        self._stopping = True
        self._fail(why)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _buffered(self) -> int:
        return sum(len(p.pending) for p in self.partitions.values())

    async def _fetch(self) -> None:
        assert self._consumer is not None
        while True:
            room = self.max_buffered - self._buffered()
            if room <= 0:
                self._buffer_room = trio.Event()
                await self._buffer_room.wait()
                continue
            epochs = dict(self.epochs)
            pending = self.loop.submit(
                self._consumer.getmany(timeout_ms=self.fetch_wait_ms, max_records=room)
            )
            try:
                with trio.CancelScope(shield=True):  # what it fetched must not be dropped
                    batches = await pending.result()
            except Exception as exc:
                raise status_of(exc, f"fetching from topic {self.topic!r}") from None
            self._add(batches, epochs)
            await trio.lowlevel.checkpoint()

    def _add(self, batches: dict[TopicPartition, list[Any]], epochs: dict[int, int]) -> None:
        added = False
        for tp, records in batches.items():
            number = tp.partition
            if not records or self.epochs.get(number, 0) != epochs.get(number, 0):
                continue  # revoked while the fetch was under way: its new owner reads them
            partition = self.partitions.setdefault(number, Partition(number))
            for record in records:
                partition.pending.append(record)
                partition.unacked[record.offset] = None
            partition.fetched_to = records[-1].offset + 1
            added = True
        if added:
            self._wake()

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            # A failure (a rebalance under way, the broker busy) is logged: the next commit
            # covers these offsets; meanwhile a restart delivers them again (at least once).
            await self.flush()

    def _offsets(self, partitions: Iterable[Partition]) -> dict[TopicPartition, int]:
        offsets = {}
        for partition in partitions:
            point = partition.commit_point()
            if point > partition.committed:
                offsets[TopicPartition(self.kafka_topic, partition.number)] = point
        return offsets

    async def flush(self) -> None:
        """Commit what the acknowledgements allow now (errors logged: at least once)."""
        try:
            await self._commit()
        except Exception as exc:
            log.warning("commit on topic %r failed: %s", self.topic, type(exc).__name__)

    async def _commit(self, partitions: Iterable[Partition] | None = None) -> None:
        chosen = list(self.partitions.values() if partitions is None else partitions)
        offsets = self._offsets(chosen)
        if not offsets or self._consumer is None:
            return
        await self.loop.run(self._consumer.commit, offsets)
        for partition in chosen:
            tp = TopicPartition(self.kafka_topic, partition.number)
            if tp in offsets:
                partition.committed = max(partition.committed, offsets[tp])

    # -- rebalances (called on the Trio thread by the listener) ---------------------------------

    def revoked(self, numbers: set[int]) -> dict[TopicPartition, int]:
        """Forget the partitions Kafka takes away; returns the offsets to commit for them."""
        gone = [self.partitions.pop(n) for n in numbers if n in self.partitions]
        for n in numbers:
            self.epochs[n] = self.epochs.get(n, 0) + 1
        offsets = self._offsets(gone)
        for member in self.members:
            for partition in gone:
                if partition.owner is member:
                    partition.owner = None
        self._buffer_room.set()
        self._wake()
        return offsets

    # -- members ---------------------------------------------------------------------------------

    def join(self, limit: int) -> Member:
        member = Member(limit)
        self.members.append(member)
        self._wake()
        return member

    def claim(self, member: Member) -> list[LogRecord]:
        """Records for ``member``: from the partitions it holds, then free ones up to its share."""
        room = member.room
        if room <= 0 or not self.partitions:
            return []
        share = math.ceil(len(self.partitions) / max(1, len(self.members)))
        owned = sum(1 for p in self.partitions.values() if p.owner is member)
        partitions = list(self.partitions.values())
        start = next(self._rotation) % len(partitions)
        claimed: list[LogRecord] = []
        for partition in partitions[start:] + partitions[:start]:
            if room <= 0:
                break
            if not partition.pending:
                continue
            if partition.owner is None:
                if owned >= share:
                    continue
                partition.owner = member
                owned += 1
            elif partition.owner is not member:
                continue
            while partition.pending and room > 0:
                record = partition.pending.popleft()
                member.delivered[(partition.number, record.offset)] = (partition, record)
                partition.held += 1
                room -= 1
                claimed.append(self._record(record))
        if claimed:
            self._buffer_room.set()
        return claimed

    def _record(self, record: Any) -> LogRecord:
        return LogRecord(
            topic=self.topic,
            partition=record.partition,
            offset=record.offset,
            key=_text(record.key),
            value=record.value or b"",
            headers={name: _text(value) for name, value in record.headers or ()},
            delivery_count=0,
        )

    def ack(self, member: Member, request: ConsumeAck) -> None:
        positions = [(p.partition, p.offset) for p in request.records]
        if len(set(positions)) != len(positions):
            raise InvalidArgument("the same record acknowledged twice in one ConsumeAck")
        for position in positions:
            if position not in member.delivered:
                raise InvalidArgument(
                    f"ack of {position}: not a record this stream delivered and has not "
                    "acknowledged yet"
                )
        for position in positions:
            partition, _ = member.delivered.pop(position)
            if self.partitions.get(partition.number) is not partition:
                continue  # revoked meanwhile: its new owner has it
            partition.unacked.pop(position[1], None)
            partition.held -= 1
            if partition.held == 0:
                partition.owner = None
        self._dirty.set()
        self._wake()

    def leave(self, member: Member) -> None:
        """The stream ended: hand its records back (to the front of their partitions)."""
        self.members.remove(member)
        back: dict[int, list[Any]] = {}
        for (number, _), (partition, record) in member.delivered.items():
            if self.partitions.get(number) is partition:
                back.setdefault(number, []).append(record)
        member.delivered.clear()
        for number, records in back.items():
            partition = self.partitions[number]
            records.sort(key=lambda r: r.offset)
            partition.pending.extendleft(reversed(records))
            partition.held = 0
            partition.owner = None
        for partition in self.partitions.values():
            if partition.owner is member:
                partition.owner = None
                partition.held = 0
        self._wake()
        self._dirty.set()

    async def serve(self, member: Member, stream: OperationStream) -> None:
        """Deliver to ``member`` and apply its acknowledgements until the client half-closes
        (return), an error or cancellation; the caller hands its records back (``leave``)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, member, stream)
            async for request in stream:
                assert isinstance(request, ConsumeAck)
                self.ack(member, request)
            nursery.cancel_scope.cancel()

    async def _deliver(self, member: Member, stream: OperationStream) -> None:
        while True:
            if self.error is not None:
                raise status_of(self.error, f"consume of topic {self.topic!r}")
            records = self.claim(member)
            if not records:
                await self._changed.wait()
                continue
            for record in records:
                await stream.send(record)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance hooks, on the asyncio thread: the group's state lives on Trio's."""

    def __init__(self, group: Group, token: trio.lowlevel.TrioToken) -> None:
        self.group = group
        self.token = token

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        numbers = {tp.partition for tp in revoked}
        if not numbers:
            return
        try:
            offsets = trio.from_thread.run_sync(self.group.revoked, numbers, trio_token=self.token)
        except trio.RunFinishedError:
            return
        if offsets and self.group._consumer is not None:
            with contextlib.suppress(Exception):  # not ours any more: its new owner rereads
                await self.group._consumer.commit(offsets)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to do: the consumer reads an assigned partition from its committed offset."""
