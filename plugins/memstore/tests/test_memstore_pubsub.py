"""memstore's publish / subscribe."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prism_plugin_memstore import MemstoreConfig, MemstorePlugin

from prism._proto.prism.data.v1 import Message, PublishRequest, PublishResponse, SubscribeRequest
from prism.sdk import InvalidArgument, ResourceExhausted, Unavailable
from prism.sdk.testing import PluginHarness


async def publish(h: PluginHarness, topic: str, payload: bytes, **headers: str) -> int:
    response = await h.execute(
        "publish", PublishRequest(topic=topic, payload=payload, headers=headers)
    )
    assert isinstance(response, PublishResponse)
    return response.sequence


async def test_memstore_publish_fans_out_to_every_subscriber() -> None:
    async with (
        PluginHarness(MemstorePlugin) as h,
        h.stream("subscribe", SubscribeRequest(topic="news")) as first,
        h.stream("subscribe", SubscribeRequest(topic="news")) as second,
        h.stream("subscribe", SubscribeRequest(topic="sport")) as other,
    ):
        assert await publish(h, "news", b"one", lang="en") == 1
        assert await publish(h, "news", b"two") == 2
        expected = [
            Message(topic="news", payload=b"one", headers={"lang": "en"}, sequence=1),
            Message(topic="news", payload=b"two", sequence=2),
        ]
        for subscriber in (first, second):
            assert [await subscriber.receive(), await subscriber.receive()] == expected
        with trio.move_on_after(0.1) as nothing:
            await other.receive()
        assert nothing.cancelled_caught


async def test_memstore_subscriber_sees_only_messages_after_subscribing() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        assert await publish(h, "t", b"before") == 0  # nobody subscribed: dropped
        async with h.stream("subscribe", SubscribeRequest(topic="t")) as sub:
            await publish(h, "t", b"after")
            message = await sub.receive()
            assert isinstance(message, Message)
            assert message.payload == b"after"


async def test_memstore_subscription_ends_when_client_goes_away() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        async with h.stream("subscribe", SubscribeRequest(topic="t")):
            assert (await h.health()).details["subscribers"] == "1"
            assert h.plugin.metrics.connections_active == 1
        await trio.testing.wait_all_tasks_blocked()
        assert (await h.health()).details["subscribers"] == "0"
        assert h.plugin.metrics.connections_active == 0


async def test_memstore_slow_subscriber_is_cut_off_at_once_with_resource_exhausted() -> None:
    config = MemstoreConfig(subscriber_buffer=3)
    async with (
        PluginHarness(MemstorePlugin, config=config) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as slow,
        h.stream("subscribe", SubscribeRequest(topic="t")) as fast,
    ):
        received = []
        for i in range(100):  # the publisher never waits for the slow one, nor the fast one
            await publish(h, "t", str(i).encode())
            message = await fast.receive()
            assert isinstance(message, Message)
            received.append(message.sequence)
        assert received == list(range(1, 101))
        # The slow one had one message in flight and 3 queued when the 5th came: it was cut
        # off then, its backlog dropped (the send it was blocked in included), so the status
        # is the first thing it reads.
        with pytest.raises(ResourceExhausted, match="fell more than 3 messages behind"):
            await slow.receive()
        assert (await h.health()).details["subscribers"] == "1"


async def test_memstore_delivery_interval_holds_messages_until_the_interval_has_passed(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = MemstoreConfig(delivery_interval_ms=1000)
    async with (
        PluginHarness(MemstorePlugin, config=config) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        # After a quiet spell the first message goes out at once (the clock is Trio's
        # MockClock: virtual time, so "at once" is exact)...
        first = trio.current_time()
        assert await publish(h, "t", b"m") == 1
        with trio.fail_after(5):
            message = await sub.receive()
        assert isinstance(message, Message)
        assert message.sequence == 1
        assert trio.current_time() == first
        # ...and what is published within the interval after that wake-up is queued, the
        # publisher answered at once, and delivered in order once the interval has passed.
        await trio.sleep(0.001)  # the subscriber's task is waiting again, not still sending
        published = trio.current_time()
        sequences = [await publish(h, "t", b"m") for _ in range(3)]
        assert sequences == [2, 3, 4]
        assert trio.current_time() == published
        with trio.fail_after(5):
            message = await sub.receive()
            arrived = trio.current_time()
            received = [message, *[await sub.receive() for _ in range(2)]]
        assert [m.sequence for m in received if isinstance(m, Message)] == sequences
        assert arrived >= first + 1.0


@pytest.mark.parametrize(
    ("config", "held_s"),
    [(MemstoreConfig(), 0.020), (MemstoreConfig(delivery_interval_ms=0), 0.0)],
    ids=["unset-is-20ms", "zero-is-at-once"],
)
async def test_memstore_delivery_interval_default_batches_only_a_busy_topic(
    autojump_clock: trio.abc.Clock, config: MemstoreConfig, held_s: float
) -> None:
    async with (
        PluginHarness(MemstorePlugin, config=config) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        waits = []
        for _ in range(3):  # 1 ms apart: the 2nd and 3rd come within the interval of a wake-up
            published = trio.current_time()
            await publish(h, "t", b"m")
            with trio.fail_after(5):
                await sub.receive()
            waits.append(trio.current_time() - published)
            await trio.sleep(0.001)  # the subscriber waits again before the next one
        await trio.sleep(1)  # a quiet spell: the next one goes out at once again
        quiet = trio.current_time()
        await publish(h, "t", b"m")
        with trio.fail_after(5):
            await sub.receive()
        assert trio.current_time() == quiet
    held = max(held_s - 0.001, 0.0)
    assert waits == pytest.approx([0.0, held, held])


async def test_memstore_delivery_interval_does_not_delay_the_cut_off(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = MemstoreConfig(subscriber_buffer=3, delivery_interval_ms=1000)
    async with (
        PluginHarness(MemstorePlugin, config=config) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        for _ in range(4):  # the 4th finds the 3 before it waiting for the interval
            await publish(h, "t", b"m")
        with trio.fail_after(0.5), pytest.raises(ResourceExhausted, match="fell more than 3"):
            await sub.receive()


async def test_memstore_delivery_interval_never_cuts_off_a_subscriber_that_keeps_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    # 40 messages, 10 times the buffer, well within one 1 s interval: a half-full queue wakes its
    # subscriber at once, so the batching never makes it fall behind (without that, the 5th
    # message would cut it off).
    config = MemstoreConfig(subscriber_buffer=4, delivery_interval_ms=1000)
    async with (
        PluginHarness(MemstorePlugin, config=config) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
        trio.open_nursery() as nursery,
    ):
        received: list[int] = []
        all_in = trio.Event()

        async def read() -> None:
            while len(received) < 40:
                message = await sub.receive()
                assert isinstance(message, Message)
                received.append(message.sequence)
            all_in.set()

        nursery.start_soon(read)
        start = trio.current_time()
        sequences = []
        for _ in range(40):  # 1,000 messages a second, the reader given time for each
            sequences.append(await publish(h, "t", b"m"))
            await trio.sleep(0.001)
        assert sequences == list(range(1, 41))
        with trio.fail_after(5):
            await all_in.wait()
        assert received == list(range(1, 41))
        assert (await h.health()).details["subscribers"] == "1"
        # Virtual time (the autojump MockClock), not a speed: no message waited for the 1 s
        # interval, each half-full queue having woken its subscriber at once.
        assert trio.current_time() - start < 1.0


@pytest.mark.parametrize("interval", [-1, 1001])
async def test_memstore_delivery_interval_out_of_range_is_invalid_argument(interval: int) -> None:
    with pytest.raises(InvalidArgument, match="delivery_interval_ms"):
        async with PluginHarness(
            MemstorePlugin, config=MemstoreConfig(delivery_interval_ms=interval)
        ):
            pass


async def test_memstore_shutdown_ends_subscriptions_with_unavailable_at_once() -> None:
    async with (
        PluginHarness(MemstorePlugin) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        with trio.fail_after(1):  # far below the default 5 s grace
            response = await h.shutdown(grace_seconds=30)
        assert response.success
        with pytest.raises(Unavailable, match="shutting down"):
            await sub.receive()


async def test_memstore_subscribe_to_empty_topic_is_invalid_argument() -> None:
    async with (
        PluginHarness(MemstorePlugin) as h,
        h.stream("subscribe", SubscribeRequest(topic="")) as sub,
    ):
        with pytest.raises(InvalidArgument, match="topic"):
            await sub.receive()
        with pytest.raises(InvalidArgument, match="topic"):
            await publish(h, "", b"x")


async def test_memstore_subscribe_rejects_further_requests() -> None:
    async with (
        PluginHarness(MemstorePlugin) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        await sub.send(SubscribeRequest(topic="u"))
        with pytest.raises(InvalidArgument, match="takes no requests after the first"):
            await sub.receive()


async def test_memstore_subscription_outlives_the_clients_half_close() -> None:
    async with (
        PluginHarness(MemstorePlugin) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        await sub.end()  # "no more requests from me", not "stop sending"
        await publish(h, "t", b"x")
        message = await sub.receive()
        assert isinstance(message, Message)
        assert message.payload == b"x"


async def test_memstore_subscribe_on_typed_path() -> None:
    async with (
        PluginHarness(MemstorePlugin, typed=True) as h,
        h.stream("subscribe", SubscribeRequest(topic="t")) as sub,
    ):
        await publish(h, "t", b"x")
        message = await sub.receive()
        assert isinstance(message, Message)
        assert message.payload == b"x"
