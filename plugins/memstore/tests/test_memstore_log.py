"""memstore's log contract beyond the acceptance suite (tests/acceptance/suites/log.py runs the
contract itself against memstore): partitions, retention, limits, shutdown."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prism_plugin_memstore import MemstoreConfig, MemstorePlugin

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    LogRecord,
    ProduceRequest,
    ProduceResponse,
    RecordPosition,
)
from prism.sdk import InvalidArgument, Unavailable
from prism.sdk.testing import HarnessStream, PluginHarness


async def produce(h: PluginHarness, topic: str, value: bytes, key: str = "") -> ProduceResponse:
    response = await h.execute("produce", ProduceRequest(topic=topic, key=key, value=value))
    assert isinstance(response, ProduceResponse)
    return response


async def record(stream: HarnessStream) -> LogRecord:
    with trio.fail_after(30):
        result = await stream.receive()
    assert isinstance(result, LogRecord)
    return result


async def test_memstore_log_keys_keep_their_partition_and_keyless_records_spread() -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(log_partitions=4)) as h:
        for key in ("a", "b", "c", "d", "e"):
            partitions = {(await produce(h, "t", b"v", key)).partition for _ in range(5)}
            assert len(partitions) == 1, f"key {key!r} went to {partitions}"
        keyless = [(await produce(h, "t", b"v")).partition for _ in range(8)]
        assert sorted(set(keyless)) == [0, 1, 2, 3]
        offsets = [(await produce(h, "t", b"v", "a")).offset for _ in range(3)]
        assert offsets == sorted(offsets)
        assert len(set(offsets)) == 3


async def test_memstore_log_a_group_reads_every_partition() -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(log_partitions=3)) as h:
        produced = {
            (p.partition, p.offset) for p in [await produce(h, "t", b"v") for _ in range(9)]
        }
        async with h.stream("consume", ConsumeRequest(topic="t", group="g")) as stream:
            got = {(r.partition, r.offset) for r in [await record(stream) for _ in range(9)]}
        assert got == produced


async def test_memstore_log_retention_drops_the_oldest_and_a_lagging_group_skips_them() -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(log_retention=3)) as h:
        for i in range(5):
            await produce(h, "t", f"v{i}".encode())
        async with h.stream("consume", ConsumeRequest(topic="t", group="g")) as stream:
            values = [(await record(stream)).value for _ in range(3)]
        assert values == [b"v2", b"v3", b"v4"]


async def test_memstore_log_max_in_flight_holds_records_back_until_an_ack() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        for i in range(3):
            await produce(h, "t", f"v{i}".encode())
        request = ConsumeRequest(topic="t", group="g", max_in_flight=1)
        async with h.stream("consume", request) as stream:
            first = await record(stream)
            with trio.move_on_after(0.2) as held:
                await stream.receive()
            assert held.cancelled_caught, "a second record came before the first was acked"
            await stream.send(ConsumeAck(records=[RecordPosition(offset=first.offset)]))
            assert (await record(stream)).value == b"v1"


async def test_memstore_log_redelivery_counts_deliveries() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await produce(h, "t", b"v")
        for expected in (1, 2, 3):
            async with h.stream("consume", ConsumeRequest(topic="t", group="g")) as stream:
                assert (await record(stream)).delivery_count == expected
            await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (MemstoreConfig(log_partitions=65), "log_partitions' must be at most 64"),
        (MemstoreConfig(log_max_in_flight=10_001), "log_max_in_flight' must be at most"),
        (MemstoreConfig(log_retention=-1), "log_retention' must not be negative"),
    ],
)
async def test_memstore_log_config_out_of_range_is_refused(
    config: MemstoreConfig, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        async with PluginHarness(MemstorePlugin, config=config):
            pass


async def test_memstore_log_bad_requests_are_invalid_argument() -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(max_value_bytes=10)) as h:
        with pytest.raises(InvalidArgument, match="topic must not be empty"):
            await produce(h, "", b"v")
        with pytest.raises(InvalidArgument):
            await produce(h, "t", b"x" * 11)
        request = ConsumeRequest(topic="t", group="g", max_in_flight=10_001)
        async with h.stream("consume", request) as stream:
            with pytest.raises(InvalidArgument, match="max_in_flight must be between"):
                await stream.receive()
        await produce(h, "t", b"v")
        async with h.stream("consume", ConsumeRequest(topic="t", group="g")) as stream:
            delivered = await record(stream)
            twice = RecordPosition(offset=delivered.offset)
            await stream.send(ConsumeAck(records=[twice, twice]))
            with pytest.raises(InvalidArgument, match="acknowledged twice"):
                await stream.receive()


async def test_memstore_log_shutdown_ends_consume_streams_with_unavailable() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        async with h.stream("consume", ConsumeRequest(topic="t", group="g")) as stream:
            assert (await h.health()).details["consumers"] == "1"
            h.plugin.begin_shutdown()
            with pytest.raises(Unavailable, match="consume again"):
                await stream.receive()
        async with h.stream("consume", ConsumeRequest(topic="t", group="g")) as stream:
            with pytest.raises(Unavailable, match="shutting down"):
                await stream.receive()
