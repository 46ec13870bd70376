"""Publish/subscribe on Redis channels, and ``eval`` replies as ``RedisValue`` messages.

A message travels as ``b"<sequence> " + bytes(Message(payload, headers))``: the sequence comes
from ``INCR`` on the topic's counter key in the same script as the ``PUBLISH`` (scripts.PUBLISH),
so it increases by one per message on the topic, and a subscriber sees a gap when it lost some.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from prism._proto.prism.data.v1 import Message
from prism.sdk import DataLoss, Unavailable
from prism_plugin_redis._proto.prism.plugins.redis.v1 import RedisArray, RedisValue
from prism_plugin_redis.resp import ConnectionLost, Pool, reply_error

__all__ = ["decode_message", "encode_message", "redis_value", "subscribe"]


def encode_message(payload: bytes, headers: dict[str, str]) -> bytes:
    return bytes(Message(payload=payload, headers=headers))


def decode_message(topic: str, data: bytes) -> Message:
    sequence, sep, body = data.partition(b" ")
    try:
        if not sep:
            raise ValueError("no sequence")
        message = Message.parse(body)
        message.sequence = int(sequence)
    except Exception:
        # Published by something else than this plugin: say so rather than guess.
        raise DataLoss(f"a message on topic {topic!r} was not published by prism") from None
    message.topic = topic
    return message


async def subscribe(
    pool: Pool, channel: bytes, topic: str, send: Callable[[Message], Awaitable[None]]
) -> None:
    """Forward every message on ``channel`` to ``send`` until cancelled, on a connection of
    its own (a subscribed connection can do nothing else). The connection authenticates as the
    pool's do; losing it is UNAVAILABLE. Cancellation closes it."""
    connection = await pool.open_connection()
    pool.open_connections -= 1
    pool.extra_connections += 1
    try:
        await connection.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        (confirmation,) = await connection.receive(1)
        if isinstance(confirmation, hiredis.ReplyError):
            raise reply_error(confirmation, "subscribe")
        while True:
            (push,) = await connection.receive(1)
            if isinstance(push, list) and len(push) == 3 and push[0] == b"message":
                await send(decode_message(topic, push[2]))
    except ConnectionLost:
        raise Unavailable(
            f"the subscription to {topic!r} lost its connection to Redis (a restart, or a "
            "subscriber too slow for Redis's pub/sub output buffer limit)"
        ) from None
    finally:
        connection.close()
        pool.extra_connections -= 1


def redis_value(reply: Any) -> RedisValue:
    """A RESP2 reply (as hiredis parses it) as a ``RedisValue``."""
    if reply is None:
        return RedisValue(nil=True)
    if isinstance(reply, int):
        return RedisValue(integer=reply)
    if isinstance(reply, bytes):
        return RedisValue(bulk=reply)
    if isinstance(reply, list):
        return RedisValue(array=RedisArray(items=[redis_value(item) for item in reply]))
    if isinstance(reply, hiredis.ReplyError):
        return RedisValue(error=str(reply))
    return RedisValue(bulk=str(reply).encode())
