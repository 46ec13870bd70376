"""``prism.client.Log`` through a real proxy to the nats plugin (in-process) on a real
nats-server (the acceptance framework's fixture): produce, a consume loop with acks, a consumer
restarting (what it did not acknowledge comes again), ``finish``, and a bad ack."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from client_testkit import OPEN, config, serving

import prism.client as pc
from prism.config import NamespaceConfig, PluginConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))

from backends import NatsServer


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def log(nats_server: NatsServer) -> AsyncIterator[pc.Log]:
    namespace = NamespaceConfig(
        name="events",
        plugin=PluginConfig(name="nats"),
        config={"port": nats_server.connection["port"], "fetch_wait_ms": 200},
        credentials=nats_server.credentials.as_map(),
        access=OPEN,
    )
    proxy_config = config(None, namespaces=(namespace,))
    async with serving(proxy_config) as running, pc.connect(running.address) as client:
        yield client.log("events")


async def test_log_consume_loop_gets_records_in_order_and_acks(log: pc.Log) -> None:
    positions = [
        await log.produce("orders", b"o%d" % i, key="k", headers={"i": str(i)}) for i in range(5)
    ]
    assert [p.offset for p in positions] == sorted(p.offset for p in positions)
    received: list[pc.Record] = []
    with trio.fail_after(30):
        async with log.consume("orders", group="billing") as consumer:
            async for record in consumer:
                received.append(record)
                await consumer.ack(record)
                if len(received) == 5:
                    break
    assert [(r.value, r.key, dict(r.headers)) for r in received] == [
        (b"o%d" % i, "k", {"i": str(i)}) for i in range(5)
    ]
    assert [r.position for r in received] == positions


async def test_log_unacknowledged_records_come_again_after_a_restart(log: pc.Log) -> None:
    for i in range(4):
        await log.produce("jobs", b"j%d" % i)
    with trio.fail_after(30):
        async with log.consume("jobs", group="workers") as consumer:
            first = [await consumer.receive() for _ in range(4)]
            assert all(first)
            await consumer.ack(*[r for r in first[:2] if r is not None])
            await consumer.finish()
        async with log.consume("jobs", group="workers") as consumer:
            again = [await consumer.receive() for _ in range(2)]
    assert [r.value for r in again if r is not None] == [b"j2", b"j3"]
    assert [r.delivery_count for r in again if r is not None] == [2, 2]


async def test_log_ack_of_a_record_not_delivered_ends_the_stream(log: pc.Log) -> None:
    await log.produce("bad-acks", b"x")
    with trio.fail_after(30):
        async with log.consume("bad-acks", group="g") as consumer:
            record = await consumer.receive()
            assert record is not None
            await consumer.ack(pc.Position(record.partition, record.offset + 100))
            with pytest.raises(pc.InvalidArgument, match="not a record"):
                await consumer.receive()


async def test_log_consume_needs_a_group(log: pc.Log) -> None:
    with trio.fail_after(30), pytest.raises(pc.InvalidArgument, match="group"):
        async with log.consume("orders", group="") as consumer:
            await consumer.receive()
