"""``prism.client.PubSub`` against memstore through a real proxy: a subscribe loop, several
subscribers, leaving a subscription (cancellation, ``break``, ``async with``) and what the
backend then sees, deadlines, and a subscription ended by the proxy stopping."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from client_testkit import config, serving

import prism.client as pc

WARM_UP = b"warm-up"


async def until_subscribed(ps: pc.PubSub, topic: str) -> None:
    """No protocol says when a subscription has started; memstore numbers a message only when
    somebody is subscribed to its topic (0 otherwise), so publish until one is numbered."""
    with trio.fail_after(30):
        while await ps.publish(topic, WARM_UP) == 0:  # noqa: ASYNC110 (the proxy's state)
            await trio.sleep(0.01)


async def until_unsubscribed(ps: pc.PubSub, topic: str) -> None:
    """Until memstore has dropped every subscriber of ``topic``."""
    with trio.fail_after(30):
        while await ps.publish(topic, b"anyone?") != 0:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_pubsub_subscribe_loop_gets_every_message_in_order(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    received: list[pc.Message] = []
    async with ps.subscribe("news") as messages:
        await until_subscribed(ps, "news")
        sequences = [await ps.publish("news", b"m%d" % i, headers={"i": str(i)}) for i in range(5)]
        async for message in messages:
            if message.payload == WARM_UP:
                continue
            received.append(message)
            if len(received) == 5:
                break
    assert [(m.topic, m.payload, dict(m.headers)) for m in received] == [
        ("news", b"m%d" % i, {"i": str(i)}) for i in range(5)
    ]
    assert [m.sequence for m in received] == sequences
    assert sequences == list(range(sequences[0], sequences[0] + 5))


async def test_pubsub_every_subscriber_gets_each_message(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    async with ps.subscribe("t") as one, ps.subscribe("t") as two, ps.subscribe("x") as other:
        await until_subscribed(ps, "t")
        await until_subscribed(ps, "x")
        # Each subscriber now skips to the marker it has not seen before.
        await ps.publish("t", b"both")
        for subscription in (one, two):
            while (message := await subscription.receive()) and message.payload == WARM_UP:
                pass
            assert message is not None
            assert message.payload == b"both"
        with trio.move_on_after(0.2):
            while (message := await other.receive()) and message.payload == WARM_UP:
                pass
            pytest.fail(f"a subscriber of another topic got {message}")


async def test_pubsub_cancelling_the_loop_ends_the_subscription(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    got: list[bytes] = []

    async def listen(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async for message in ps.subscribe("cancel-me"):
                got.append(message.payload)

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(listen)
        await until_subscribed(ps, "cancel-me")
        with trio.fail_after(30):
            while not got:  # noqa: ASYNC110 (filled by the loop under test)
                await trio.sleep(0.01)
        scope.cancel()
    assert got[0] == WARM_UP
    await until_unsubscribed(ps, "cancel-me")  # the proxy and memstore let it go


async def test_pubsub_break_out_of_the_loop_ends_the_subscription(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_subscribed, ps, "brk")
        async for message in ps.subscribe("brk"):
            assert message.payload == WARM_UP
            break
    await until_unsubscribed(ps, "brk")


async def test_pubsub_leaving_async_with_ends_the_subscription(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    async with ps.subscribe("block") as messages:
        await until_subscribed(ps, "block")
        assert messages.status is None
    assert messages.status is pc.Status.CANCELLED
    await until_unsubscribed(ps, "block")


async def test_pubsub_subscribe_timeout_is_deadline_exceeded(
    memory_client: pc.Client, autojump_clock: trio.testing.MockClock
) -> None:
    ps = memory_client.pubsub("kv")
    with pytest.raises(pc.DeadlineExceeded):
        async for _ in ps.subscribe("quiet", timeout=30):
            pass
    await until_unsubscribed(ps, "quiet")


async def test_pubsub_empty_topic_is_invalid_argument(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    with pytest.raises(pc.InvalidArgument):
        await ps.publish("", b"x")
    with pytest.raises(pc.InvalidArgument):
        async for _ in ps.subscribe(""):
            pass


async def test_pubsub_subscription_ends_unavailable_when_the_proxy_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(config(None)) as proxy, pc.connect(proxy.address) as client:
        ps = client.pubsub("kv")
        async with ps.subscribe("t") as messages:
            await until_subscribed(ps, "t")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(proxy.stop)
                with pytest.raises(pc.Unavailable):
                    async for _ in messages:
                        pass


async def test_pubsub_close_from_another_task_ends_the_loop(client: pc.Client) -> None:
    ps = client.pubsub("kv")
    subscription = ps.subscribe("closing")
    got: list[bytes] = []

    async def listen() -> None:
        async for message in subscription:
            got.append(message.payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        await until_subscribed(ps, "closing")
        with trio.fail_after(30):
            while not got:  # noqa: ASYNC110 (filled by the loop under test)
                await trio.sleep(0.01)
        subscription.close()  # the listening loop ends; the nursery can close
    assert subscription.status is pc.Status.CANCELLED
    await until_unsubscribed(ps, "closing")
