"""log: produce to a topic, consume in a consumer group with acknowledgements on the same stream
— order per key, at least once across a consumer's restart (what was not acknowledged comes
again, what was does not), a group's members sharing the records (the RFC's test: 3 members,
100 records, each gets a share, none gets a record another got), groups independent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from kit import Ctx, Subscription, check, expect_status

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    ProduceRequest,
    RecordPosition,
)
from prism.grpc.wire.status import Status

WITHIN = 30  # seconds: only catches a record that never comes


@asynccontextmanager
async def consuming(
    ctx: Ctx, topic: str, group: str, max_in_flight: int = 0
) -> AsyncIterator[Subscription]:
    request = ConsumeRequest(topic=topic, group=group, max_in_flight=max_in_flight)
    async with ctx.client.stream("consume", request) as stream:
        yield stream


async def next_record(stream: Subscription) -> Any:
    with trio.fail_after(WITHIN):
        record = await stream.receive()
    assert record is not None, "the consume stream ended"
    return record


async def ack(stream: Subscription, *records: Any) -> None:
    positions = [RecordPosition(partition=r.partition, offset=r.offset) for r in records]
    await stream.send(ConsumeAck(records=positions))


async def finish(stream: Subscription) -> None:
    """Half-close and wait for the end: the acknowledgements sent are applied by then (a
    cancelled stream may lose the last ones: at least once)."""
    await stream.end()
    with trio.fail_after(WITHIN):
        while await stream.receive() is not None:
            pass  # delivered after the half-close: handed back, delivered again


async def produce(ctx: Ctx, topic: str, value: bytes, key: str = "", **headers: str) -> Any:
    request = ProduceRequest(topic=topic, key=key, value=value, headers=headers)
    return await ctx.call("produce", request)


@check("log")
async def produce_gives_increasing_offsets_in_the_key_s_partition(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    positions = [await produce(ctx, topic, f"v{i}".encode(), key="k") for i in range(5)]
    assert len({p.partition for p in positions}) == 1, "one key went to several partitions"
    offsets = [p.offset for p in positions]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 5


@check("log")
async def a_consumer_gets_every_record_in_order_with_key_and_headers(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    produced = [await produce(ctx, topic, f"v{i}".encode(), "k", i=str(i)) for i in range(10)]
    async with consuming(ctx, topic, "g") as stream:
        for i, position in enumerate(produced):
            record = await next_record(stream)
            assert (record.topic, record.key, record.value) == (topic, "k", f"v{i}".encode())
            assert record.headers == {"i": str(i)}
            assert (record.partition, record.offset) == (position.partition, position.offset)
            assert record.delivery_count in (0, 1)
            await ack(stream, record)


@check("log")
async def records_produced_while_consuming_arrive(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    async with consuming(ctx, topic, "g") as stream:
        for i in range(3):
            await produce(ctx, topic, f"live{i}".encode())
            record = await next_record(stream)
            assert record.value == f"live{i}".encode()
            await ack(stream, record)


@check("log")
async def unacknowledged_records_are_delivered_again_after_a_restart(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    for i in range(6):
        await produce(ctx, topic, f"v{i}".encode(), "k")
    async with consuming(ctx, topic, "g") as stream:
        first = [await next_record(stream) for _ in range(6)]
        await ack(stream, *first[:3])
        await finish(stream)
    # The consumer restarts: the three it did not acknowledge come again, in order, and only
    # they (a marker produced now comes after them).
    async with consuming(ctx, topic, "g") as stream:
        again = [await next_record(stream) for _ in range(3)]
        assert [r.value for r in again] == [b"v3", b"v4", b"v5"]
        assert [r.offset for r in again] == [r.offset for r in first[3:]]
        assert all(r.delivery_count in (0, 2) for r in again), [r.delivery_count for r in again]
        await ack(stream, *again)
        await produce(ctx, topic, b"marker")
        marker = await next_record(stream)
        assert marker.value == b"marker", f"delivered again after its ack: {marker.value!r}"
        await ack(stream, marker)


@check("log")
async def a_group_spreads_records_across_members_without_duplicates(ctx: Ctx) -> None:
    """The RFC's test. Each member may hold one unacknowledged record (max_in_flight 1) and
    holds its first until all three have one, so none can take every record."""
    topic = ctx.key("topic")
    for i in range(100):
        await produce(ctx, topic, f"v{i}".encode(), key=f"k{i}")
    got: list[list[Any]] = [[], [], []]
    all_started = trio.Event()
    done = trio.Event()

    async def member(index: int) -> None:
        async with consuming(ctx, topic, "workers", max_in_flight=1) as stream:
            while True:
                record = await next_record(stream)
                got[index].append(record)
                if all(got):
                    all_started.set()
                await all_started.wait()
                await ack(stream, record)
                if sum(map(len, got)) >= 100:
                    done.set()

    with trio.fail_after(4 * WITHIN):
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(member, index)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert all(got), f"a member got nothing: {[len(g) for g in got]}"
    values = [r.value for g in got for r in g]
    assert len(values) == len(set(values)), "a record was delivered to two members"
    assert set(values) == {f"v{i}".encode() for i in range(100)}


@check("log")
async def two_groups_each_get_every_record(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    for i in range(5):
        await produce(ctx, topic, f"v{i}".encode(), "k")
    for group in ("one", "two"):
        async with consuming(ctx, topic, group) as stream:
            records = [await next_record(stream) for _ in range(5)]
            assert [r.value for r in records] == [f"v{i}".encode() for i in range(5)]
            await ack(stream, *records)
            await finish(stream)


@check("log")
async def acknowledging_a_record_not_delivered_is_invalid_argument(ctx: Ctx) -> None:
    topic = ctx.key("topic")
    await produce(ctx, topic, b"v")
    with expect_status(Status.INVALID_ARGUMENT):
        async with consuming(ctx, topic, "g") as stream:
            record = await next_record(stream)
            await stream.send(
                ConsumeAck(records=[RecordPosition(partition=0, offset=record.offset + 1000)])
            )
            with trio.fail_after(WITHIN):
                await stream.receive()
    async with consuming(ctx, topic, "g") as stream:  # the stream ended: handed back
        again = await next_record(stream)
        assert again.value == b"v"
        await ack(stream, again)


@check("log")
async def a_half_closed_stream_ends_and_hands_back_what_it_did_not_acknowledge(
    ctx: Ctx,
) -> None:
    topic = ctx.key("topic")
    for i in range(2):
        await produce(ctx, topic, f"v{i}".encode())
    async with consuming(ctx, topic, "g") as stream:
        done, kept = await next_record(stream), await next_record(stream)
        await ack(stream, done)
        await finish(stream)
    async with consuming(ctx, topic, "g") as stream:
        again = await next_record(stream)
        assert again.offset == kept.offset
        await ack(stream, again)


@check("log")
async def consume_without_a_group_is_invalid_argument(ctx: Ctx) -> None:
    with expect_status(Status.INVALID_ARGUMENT):
        async with consuming(ctx, ctx.key("topic"), "") as stream:
            await stream.receive()


@check("log")
async def an_empty_topic_is_invalid_argument(ctx: Ctx) -> None:
    with expect_status(Status.INVALID_ARGUMENT):
        await produce(ctx, "", b"x")
