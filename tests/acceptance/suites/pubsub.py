"""pubsub: publish, and subscribe as a stream — every message after the subscription started,
in order, with its headers and an increasing sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from kit import Ctx, Subscription, check, expect_status

from prism._proto.prism.data.v1 import PublishRequest, SubscribeRequest
from prism.grpc.wire.status import Status

WARM_UP = b"warm-up"


@asynccontextmanager
async def subscribed(ctx: Ctx, topic: str) -> AsyncIterator[Subscription]:
    """A subscription known to be in place: publish warm-up messages until one arrives (no
    protocol tells a client when its subscription started), then skip the warm-ups."""
    async with ctx.client.stream("subscribe", SubscribeRequest(topic=topic)) as stream:
        async with trio.open_nursery() as nursery:

            async def warm_up() -> None:
                while True:
                    await ctx.call("publish", PublishRequest(topic=topic, payload=WARM_UP))
                    await trio.sleep(0.05)

            nursery.start_soon(warm_up)
            with trio.fail_after(30):
                first = await stream.receive()
            nursery.cancel_scope.cancel()
        assert first is not None
        assert first.payload == WARM_UP
        yield _SkipWarmUps(stream)


class _SkipWarmUps:
    def __init__(self, stream: Subscription) -> None:
        self._stream = stream

    async def receive(self) -> Any:
        with trio.fail_after(30):
            while True:
                message = await self._stream.receive()
                if message is None or message.payload != WARM_UP:
                    return message


@check("pubsub")
async def a_subscriber_gets_every_message_in_order(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    async with subscribed(ctx, topic) as stream:
        for i in range(20):
            await ctx.call(
                "publish",
                PublishRequest(topic=topic, payload=f"m{i}".encode(), headers={"i": str(i)}),
            )
        received = []
        for i in range(20):  # one by one: a lost message fails at once, not by a timeout
            message = await stream.receive()
            assert message is not None
            assert (message.payload, message.headers) == (f"m{i}".encode(), {"i": str(i)})
            received.append(message)
    assert {m.topic for m in received} == {topic}
    sequences = [m.sequence for m in received]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 20


@check("pubsub")
async def two_subscribers_both_get_each_message(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    async with subscribed(ctx, topic) as one, subscribed(ctx, topic) as two:
        await ctx.call("publish", PublishRequest(topic=topic, payload=b"both"))
        assert (await one.receive()).payload == b"both"
        assert (await two.receive()).payload == b"both"


@check("pubsub")
async def a_subscription_sees_only_its_topic(ctx: Ctx) -> None:
    async with subscribed(ctx, ctx.key("mine")) as stream:
        await ctx.call("publish", PublishRequest(topic=ctx.key("other"), payload=b"not yours"))
        await ctx.call("publish", PublishRequest(topic=ctx.key("mine"), payload=b"yours"))
        assert (await stream.receive()).payload == b"yours"


@check("pubsub")
async def an_empty_topic_is_invalid_argument(ctx: Ctx) -> None:
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call("publish", PublishRequest(topic="", payload=b"x"))
