"""Typed helpers for the log/queue contract (``prism.data.v1``'s log.proto): produce records,
consume them in a consumer group and acknowledge them on the same stream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    LogRecord,
    ProduceRequest,
    ProduceResponse,
    RecordPosition,
)
from prism.client._envelope import decode_stream_response
from prism.client.stream import OperationStream

if TYPE_CHECKING:
    from prism.client.client import Client

__all__ = ["Consumer", "Log", "Position", "Record"]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record is: Kafka's partition and offset; JetStream's partition 0 and stream
    sequence."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Record:
    """A record a consume stream delivered. ``delivery_count`` is 1 the first time, more when it
    comes again (it was not acknowledged before); 0 when the backend does not count."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    delivery_count: int = 0

    @property
    def position(self) -> Position:
        return Position(self.partition, self.offset)


def _record(response: bytes) -> tuple[Record | None, bool]:
    proto, final = decode_stream_response(response, LogRecord)
    if proto is None:
        return None, final
    record = Record(
        proto.topic,
        proto.partition,
        proto.offset,
        proto.key,
        proto.value,
        dict(proto.headers),
        proto.delivery_count,
    )
    return record, final


class Consumer:
    """One consume stream: iterate for records, ``ack`` them as they are done::

        async with log.consume("orders", group="billing") as consumer:
            async for record in consumer:
                handle(record)
                await consumer.ack(record)

    Leaving the block cancels the stream; what it delivered and was not acknowledged is
    delivered again to the group (an ``ack`` sent just before may be lost too: at least once).
    :meth:`finish` ends it gracefully instead: acknowledgements sent are applied first.
    """

    def __init__(self, stream: OperationStream[Record]) -> None:
        self._stream = stream

    async def __aenter__(self) -> Consumer:
        await self._stream.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stream.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Record:
        return await self._stream.__anext__()

    async def receive(self) -> Record | None:
        """The next record (waiting for one); None once the stream has ended."""
        return await self._stream.receive()

    async def ack(self, *records: Record | Position) -> None:
        """Acknowledge records this stream delivered: they are not delivered to the group
        again. A position it did not deliver (or one acknowledged already) ends the stream with
        ``InvalidArgument``."""
        positions = [RecordPosition(partition=r.partition, offset=r.offset) for r in records]
        await self._stream.send(ConsumeAck(records=positions))

    async def finish(self) -> None:
        """End the stream gracefully: the plugin applies the acknowledgements sent, hands back
        what is unacknowledged, and ends the stream; records it delivered meanwhile are
        dropped here (they come again). Cancellation abandons the wait (the call is closed
        when the block is left)."""
        await self._stream.end()
        while await self._stream.receive() is not None:
            pass

    def close(self) -> None:
        self._stream.close()


class Log:
    """Produce and consume on one namespace: ``log = client.log("events")``."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<prism.client.Log {self.namespace!r}>"

    def with_timeout(self, timeout: float | None) -> Log:
        """The same namespace, each ``produce`` bounded by ``timeout`` seconds."""
        return Log(self.client.with_timeout(timeout), self.namespace)

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Position:
        """Append a record; returns where the backend stored it (records of one key share a
        partition and keep their order)."""
        request = ProduceRequest(topic=topic, key=key, value=value, headers=dict(headers or {}))
        response = await self.client.execute(self.namespace, "produce", request, ProduceResponse)
        return Position(response.partition, response.offset)

    def consume(
        self, topic: str, *, group: str, max_in_flight: int = 0, timeout: float | None = None
    ) -> Consumer:
        """A consume stream of ``group`` (required) on ``topic``: see :class:`Consumer`. At most
        ``max_in_flight`` records unacknowledged at once (0: the plugin's default); a new group
        starts at the oldest record kept. ``timeout`` bounds the whole stream."""
        request = ConsumeRequest(topic=topic, group=group, max_in_flight=max_in_flight)
        return Consumer(
            self.client._stream(self.namespace, "consume", request, _record, timeout=timeout)
        )
