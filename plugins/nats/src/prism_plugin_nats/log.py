"""One consume stream on a JetStream durable pull consumer (the group).

The stream pulls at most ``max_in_flight`` records minus those it delivered and the client has
not acknowledged yet, so a member holding records gets no more and the group's other members
get the rest. Acknowledgements come on the same stream (``ConsumeAck``) and are passed to
JetStream (``+ACK``). When the stream ends, however it ends, the records it delivered and that
were not acknowledged — and those of a pull still under way, which it waits for — are handed
back (``-NAK``: JetStream delivers them again at once, to any member of the group), instead of
waiting for the consumer's ack_wait. A client that half-closes (sends no more) ends the stream
gracefully: the acknowledgements it sent before are applied, then the stream ends.
"""

from __future__ import annotations

import contextlib
from typing import Any

import nats.errors
import trio
from nats.js.client import JetStreamContext

from prism._proto.prism.data.v1 import ConsumeAck, LogRecord
from prism.sdk import OperationStream
from prism.sdk.consume import acknowledged
from prism_plugin_nats.aio import AsyncioLoop, Pending
from prism_plugin_nats.names import status_of

__all__ = ["KEY_HEADER", "Consumer"]

KEY_HEADER = "Prism-Key"
HAND_BACK_GRACE = 5.0  # seconds, beyond the last pull's own wait


class Consumer:
    def __init__(
        self, loop: AsyncioLoop, subscription: Any, topic: str, limit: int, fetch_wait: float
    ) -> None:
        self.loop = loop
        self.subscription = subscription
        self.topic = topic
        self.limit = limit
        self.fetch_wait = fetch_wait
        self.delivered: dict[int, Any] = {}  # stream sequence → nats-py Msg
        self._room = trio.Event()
        self._pull: Pending[list[Any]] | None = None

    async def run(self, stream: OperationStream) -> None:
        """Deliver until the client half-closes (then return, its acknowledgements applied),
        an error or cancellation; always hand back what is unacknowledged."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver, stream)
                await self._acknowledge(stream)
                nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(self.fetch_wait + HAND_BACK_GRACE) as cleanup:
                cleanup.shield = True
                await self._hand_back()

    async def _deliver(self, stream: OperationStream) -> None:
        while True:
            room = self.limit - len(self.delivered)
            if room <= 0:
                self._room = trio.Event()
                await self._room.wait()
                continue
            self._pull = self.loop.submit(_pull(self.subscription, room, self.fetch_wait))
            try:
                messages = await self._pull.result()
            except Exception as exc:
                raise status_of(exc, "consume") from None
            self._pull = None
            for message in messages:
                self.delivered[message.metadata.sequence.stream] = message
            for message in messages:
                await stream.send(self.record(message))

    def record(self, message: Any) -> LogRecord:
        headers = dict(message.headers or {})
        key = headers.pop(KEY_HEADER, "")
        metadata = message.metadata
        return LogRecord(
            topic=self.topic,
            partition=0,
            offset=metadata.sequence.stream,
            key=key,
            value=message.data,
            headers=headers,
            delivery_count=metadata.num_delivered,
        )

    async def _acknowledge(self, stream: OperationStream) -> None:
        async for request in stream:
            assert isinstance(request, ConsumeAck)
            # JetStream: one partition (0), the offset is the stream sequence.
            offsets = [offset for _, offset in acknowledged(request, self._positions())]
            messages = [self.delivered.pop(offset) for offset in offsets]
            try:
                await self.loop.run(_each, messages, "ack")
            except Exception as exc:
                raise status_of(exc, "ack") from None
            self._room.set()

    def _positions(self) -> set[tuple[int, int]]:
        return {(0, sequence) for sequence in self.delivered}

    async def _hand_back(self) -> None:
        messages = list(self.delivered.values())
        self.delivered.clear()
        pull, self._pull = self._pull, None
        if pull is not None:  # its records reached us, or will: hand them back too
            # Nothing came, or the connection is gone (the consumer's ack_wait then applies).
            with contextlib.suppress(Exception):
                messages += await pull.result()
        with contextlib.suppress(Exception):  # gone: the server redelivers after ack_wait
            await self.loop.run(_close, self.subscription, messages)


async def _pull(subscription: Any, batch: int, wait: float) -> list[Any]:
    try:
        messages: list[Any] = await subscription.fetch(batch, timeout=wait)
    except nats.errors.TimeoutError:
        return []
    return messages


async def _each(messages: list[Any], verb: str) -> None:
    for message in messages:
        await getattr(message, verb)()


async def _close(subscription: Any, messages: list[Any]) -> None:
    # A pull the client gave up on lives on in the server for about the one-way latency more
    # (nats-py's `expires` is its own timeout less 0.1 ms): a record handed back while it lives
    # would be delivered to it, and lost to the group until ack_wait. The flush's round trip
    # outlasts it; records it delivered meanwhile wait in the subscription's queue, and are
    # handed back with the rest.
    with contextlib.suppress(Exception):
        await subscription._sub._conn.flush()
    queue = subscription._sub._pending_queue
    while not queue.empty():
        message = queue.get_nowait()
        if JetStreamContext.is_status_msg(message):
            continue  # the server's "no messages" / "request timeout" answers
        messages.append(message)
    await _each(messages, "nak")
    await subscription.unsubscribe()
