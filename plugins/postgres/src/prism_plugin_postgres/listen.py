"""Publish/subscribe on LISTEN/NOTIFY.

``publish`` is one statement: it increments the topic's row in ``<table>_topics`` (its sequence
number) and calls ``pg_notify`` in the same transaction. The row lock orders publishers of one
topic, and PostgreSQL delivers notifications in commit order, so every subscriber sees each
topic's messages in sequence order, numbered 1, 2, 3, ... without gaps unless some were lost.

Topics are arbitrary text, channel names are identifiers of at most 63 bytes: a topic's channel
is ``prism_`` + the first 40 hex digits of its SHA-256, and the notification's payload carries
the topic itself (subscribers compare it, so a hash collision costs nothing but a comparison):
``<sequence>:<JSON {"t": topic, "h": headers, "p": base64 payload}>``. PostgreSQL limits a
payload to 8000 bytes, so a message's topic, headers and payload must fit in that once encoded
(about 5.9 KB of payload): more is INVALID_ARGUMENT.

Subscriptions share one connection of their own (opened on the first subscription, not from the
pool): one task owns it, running ``LISTEN``/``UNLISTEN`` as subscriptions come and go and
reading notifications in between, fanned out to each subscriber's bounded buffer. A subscriber
that falls ``buffer`` messages behind ends with RESOURCE_EXHAUSTED; a subscription whose
connection is lost ends with UNAVAILABLE (reconnect: the sequence numbers show what was missed).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import psycopg
import trio
from psycopg import generators, pq

from prism._proto.prism.data.v1 import Message
from prism.sdk import GrpcError, InvalidArgument, ResourceExhausted, Unavailable
from prism_plugin_postgres.connection import PgConnection
from prism_plugin_postgres.pool import Pool
from prism_plugin_postgres.wait import wait

__all__ = ["MAX_NOTIFY_BYTES", "Listener", "channel", "envelope"]

MAX_NOTIFY_BYTES = 7999  # PostgreSQL: "payload string too long" at 8000
_COMMAND_OK = pq.ExecStatus.COMMAND_OK


def channel(topic: str) -> str:
    return "prism_" + hashlib.sha256(topic.encode()).hexdigest()[:40]


def envelope(topic: str, payload: bytes, headers: Mapping[str, str]) -> str:
    text = json.dumps(
        {"t": topic, "h": dict(headers), "p": base64.b64encode(payload).decode()},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    if len(text.encode()) + 20 > MAX_NOTIFY_BYTES:  # 20: the sequence number and its colon
        raise InvalidArgument(
            f"the message is {len(text.encode())} bytes once encoded for NOTIFY (topic, headers "
            f"and base64 payload); PostgreSQL allows {MAX_NOTIFY_BYTES - 20}"
        )
    return text


def _message(text: str) -> Message | None:
    sequence, _, body = text.partition(":")
    try:
        decoded = json.loads(body)
        return Message(
            topic=decoded["t"],
            payload=base64.b64decode(decoded["p"]),
            headers=decoded["h"],
            sequence=int(sequence),
        )
    except (ValueError, KeyError, TypeError):
        return None  # a NOTIFY on our channel by someone else: not a message of ours


@dataclass(eq=False)
class _Subscriber:
    topic: str
    send: trio.MemorySendChannel[Message]
    ended: GrpcError | None = None


@dataclass
class _Channel:
    subscribers: set[_Subscriber] = field(default_factory=set)
    listening: trio.Event = field(default_factory=trio.Event)


class Listener:
    """The shared LISTEN connection and its subscribers; ``run`` in the plugin's nursery."""

    def __init__(self, pool: Pool, buffer: int) -> None:
        self._pool = pool
        self._buffer = buffer
        self._channels: dict[str, _Channel] = {}
        self._commands: list[tuple[str, str]] = []
        self._wake = trio.Event()
        self._running = False
        self._closed: GrpcError | None = None
        self.subscribers = 0

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Messages published to ``topic`` from when this returns (the server confirmed the
        LISTEN) until the block ends. Raises the subscription's error when it ended."""
        if self._closed is not None:
            raise self._closed
        name = channel(topic)
        send, receive = trio.open_memory_channel[Message](self._buffer)
        subscriber = _Subscriber(topic, send)
        state = self._channels.get(name)
        if state is None:
            state = self._channels[name] = _Channel()
            self._command("LISTEN", name)
        state.subscribers.add(subscriber)
        self.subscribers += 1
        try:
            await state.listening.wait()
            if subscriber.ended is not None:
                raise subscriber.ended
            async with receive:
                yield receive
            if subscriber.ended is not None:
                raise subscriber.ended
        finally:
            self.subscribers -= 1
            state.subscribers.discard(subscriber)
            if not state.subscribers and self._channels.get(name) is state:
                del self._channels[name]
                self._command("UNLISTEN", name)

    def _command(self, verb: str, name: str) -> None:
        self._commands.append((verb, name))
        self._wake.set()

    def close(self, error: GrpcError) -> None:
        """End every subscription with ``error``; later ones are refused with it."""
        self._closed = error
        self._end_all(error)

    def _end_all(self, error: GrpcError) -> None:
        for state in self._channels.values():
            for subscriber in state.subscribers:
                subscriber.ended = error
                subscriber.send.close()
            state.listening.set()

    def _dispatch(self, notify: pq.PGnotify) -> None:
        state = self._channels.get(notify.relname.decode())
        if state is None:
            return
        message = _message(notify.extra.decode())
        if message is None:
            return
        for subscriber in list(state.subscribers):
            if subscriber.topic != message.topic or subscriber.ended is not None:
                continue
            try:
                subscriber.send.send_nowait(message)
            except trio.WouldBlock:
                subscriber.ended = ResourceExhausted(
                    f"the subscriber fell more than {self._buffer} messages behind "
                    "(config.subscriber_buffer): subscription ended"
                )
                subscriber.send.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve subscriptions until cancelled: connect when the first comes, and again after a
        connection is lost (its subscriptions end with UNAVAILABLE)."""
        task_status.started()
        while True:
            while not self._channels:
                self._wake = trio.Event()
                await self._wake.wait()
            try:
                connection = await self._pool.connect()
            except GrpcError as failed:
                self._lost(failed)
                continue
            try:
                await self._serve(connection)
            except (psycopg.Error, OSError):
                self._lost(
                    Unavailable("the LISTEN connection to PostgreSQL was lost: subscribe again")
                )
            finally:
                self._pool.discard(connection)

    def _lost(self, error: GrpcError) -> None:
        self._commands.clear()
        self._end_all(error)
        self._channels.clear()

    async def _serve(self, connection: PgConnection) -> None:
        pg = connection.pgconn
        pg.exit_pipeline_mode()
        pg.notify_handler = self._dispatch
        # Every channel wanted now: a new connection listens to all of them.
        self._commands = [("LISTEN", name) for name in self._channels]
        while True:
            while self._commands:
                verb, name = self._commands.pop(0)
                pg.send_query(f'{verb} "{name}"'.encode())
                results = await wait(generators.execute(pg), pg.socket)
                if any(r.status != _COMMAND_OK for r in results):
                    raise psycopg.OperationalError(f"{verb} failed")
                state = self._channels.get(name)
                if verb == "LISTEN" and state is not None:
                    state.listening.set()
            self._wake = trio.Event()
            if self._commands:
                continue
            async with trio.open_nursery() as nursery:

                async def woken() -> None:
                    await self._wake.wait()
                    nursery.cancel_scope.cancel()

                async def notified() -> None:
                    await trio.lowlevel.wait_readable(pg.socket)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(woken)
                nursery.start_soon(notified)
            pg.consume_input()  # raises when the server closed the connection
            while (notify := pg.notifies()) is not None:
                self._dispatch(notify)
