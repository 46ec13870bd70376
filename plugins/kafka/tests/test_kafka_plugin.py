"""The kafka plugin on a real Kafka-protocol broker (Tansu, the acceptance framework's fixture),
through the SDK's harness: what the conformance suite does not cover — its config and
credential checks, its topic names and partition count, topics it may not create, commits only
of what was acknowledged, and a shutdown ending consume streams."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "acceptance"))

from backends import TansuBroker, free_port
from prism_plugin_kafka import KafkaPlugin
from prism_plugin_kafka.names import escape

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    ProduceRequest,
    RecordPosition,
)
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus
from prism.sdk import InvalidArgument, NotFound, Unauthenticated, Unavailable
from prism.sdk.testing import PluginHarness

WITHIN = 60  # seconds: only catches a hang (a group's first join takes seconds on Tansu)


@pytest.fixture(scope="module")
def broker() -> Iterator[TansuBroker]:
    tansu = TansuBroker()
    try:
        tansu.start()
        yield tansu
    finally:
        tansu.stop()


def harness(broker: TansuBroker, **config: Any) -> PluginHarness:
    settings = {
        "bootstrap_servers": [f"127.0.0.1:{broker.connection['port']}"],
        "anonymous": True,
        "fetch_wait_ms": 200,
        **config,
    }
    return PluginHarness(KafkaPlugin, config=settings)


def test_kafka_escape_is_one_to_one_and_kafka_safe() -> None:
    names = ["a/b", "a_2fb", "a b", "a_b", "ü", "a-b", "a.b", "A"]
    escaped = [escape("", n) for n in names]
    assert len(set(escaped)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", e) for e in escaped)
    assert escape("app.", "orders-1.eu") == "app.orders-1.eu"
    with pytest.raises(InvalidArgument, match="249"):
        escape("", "x" * 250)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"partitions": -1}, "partitions"),
        ({"bootstrap_servers": ["nohost"]}, "bootstrap_servers"),
        ({"topic_prefix": "a/b"}, "topic_prefix"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"default_max_in_flight": 50, "max_in_flight_limit": 10}, "default_max_in_flight"),
    ],
)
async def test_kafka_initialize_refuses_bad_config(
    broker: TansuBroker, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        async with harness(broker, **config):
            pass


async def test_kafka_initialize_needs_both_credentials_unless_anonymous(
    broker: TansuBroker,
) -> None:
    config = {"bootstrap_servers": [f"127.0.0.1:{broker.connection['port']}"]}
    with pytest.raises(InvalidArgument, match="credential"):
        async with PluginHarness(KafkaPlugin, config=config, credentials={"username": "u"}):
            pass


async def test_kafka_sasl_plain_on_a_broker_without_it_fails_initialize(
    broker: TansuBroker,
) -> None:
    """Tansu offers no SASL: a namespace configured with credentials does not start (and the
    password is in no error)."""
    config = {"bootstrap_servers": [f"127.0.0.1:{broker.connection['port']}"]}
    credentials = {"username": "prism", "password": "s3cret-never-shown"}
    with trio.fail_after(WITHIN), pytest.raises((Unauthenticated, Unavailable)) as caught:
        async with PluginHarness(KafkaPlugin, config=config, credentials=credentials):
            pass
    assert "s3cret-never-shown" not in str(caught.value)


async def test_kafka_initialize_without_a_broker_is_unavailable() -> None:
    config = {
        "bootstrap_servers": [f"127.0.0.1:{free_port()}"],
        "anonymous": True,
        "request_timeout_ms": 2000,
    }
    with trio.fail_after(WITHIN), pytest.raises(Unavailable):
        async with PluginHarness(KafkaPlugin, config=config):
            pass


async def test_kafka_health_is_healthy_while_the_broker_answers(broker: TansuBroker) -> None:
    async with harness(broker) as h:
        with trio.fail_after(WITHIN):
            health = await h.health()
    assert health.status == HealthCheckResponseStatus.HEALTHY, health.message


async def test_kafka_no_create_topics_makes_an_unknown_topic_not_found(
    broker: TansuBroker,
) -> None:
    async with harness(broker, no_create_topics=True) as h:
        with pytest.raises(NotFound, match="does not exist"):
            await h.execute("produce", ProduceRequest(topic="never-created", value=b"x"))


async def test_kafka_topic_is_created_under_the_prefix_with_its_partitions(
    broker: TansuBroker,
) -> None:
    async with harness(broker, topic_prefix="app.", partitions=3) as h:
        await h.execute("produce", ProduceRequest(topic="a/b c", value=b"x"))

    async def describe(admin: Any) -> Any:
        return await admin.describe_topics(["app.a_2fb_20c"])

    (topic,) = await trio.to_thread.run_sync(broker.run, describe)
    assert topic["error_code"] == 0
    assert len(topic["partitions"]) == 3


async def test_kafka_max_in_flight_over_the_limit_is_invalid(broker: TansuBroker) -> None:
    async with harness(broker, max_in_flight_limit=10, default_max_in_flight=5) as h:
        with pytest.raises(InvalidArgument, match="max_in_flight"):
            async with h.stream(
                "consume", ConsumeRequest(topic="t", group="g", max_in_flight=11)
            ) as s:
                await s.receive()


async def test_kafka_commits_only_the_acknowledged_prefix(broker: TansuBroker) -> None:
    """Kafka keeps one offset per partition: a record acknowledged after one that was not comes
    again after a restart with it (at least once), and nothing before them does. (Within one
    plugin instance the group's consumer remembers what was acknowledged: only b comes again.)
    """
    topic = "prefix-commit"
    async with harness(broker) as h:
        for value in (b"a", b"b", b"c"):
            await h.execute("produce", ProduceRequest(topic=topic, key="k", value=value))
        async with h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream:
            with trio.fail_after(WITHIN):
                a, _, c = [await stream.receive() for _ in range(3)]
            positions = [RecordPosition(partition=r.partition, offset=r.offset) for r in (a, c)]  # type: ignore[union-attr]
            await stream.send(ConsumeAck(records=positions))
            await stream.end()
            with trio.fail_after(WITHIN):
                while await stream.receive() is not None:
                    pass
        async with h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream:
            with trio.fail_after(WITHIN):
                again = await stream.receive()
            assert again is not None
            assert again.value == b"b"
    async with (
        harness(broker) as h,
        h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream,
    ):
        with trio.fail_after(WITHIN):
            restarted = [await stream.receive(), await stream.receive()]
    assert [r.value for r in restarted] == [b"b", b"c"]  # type: ignore[union-attr]


async def test_kafka_shutdown_ends_consume_streams_and_keeps_their_acknowledgements(
    broker: TansuBroker,
) -> None:
    topic = "shut-down"
    async with harness(broker) as h:
        for value in (b"a", b"b"):
            await h.execute("produce", ProduceRequest(topic=topic, key="k", value=value))
        async with h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream:
            with trio.fail_after(WITHIN):
                held = [await stream.receive(), await stream.receive()]
            first = held[0]
            assert first is not None
            await stream.send(
                ConsumeAck(records=[RecordPosition(partition=first.partition, offset=first.offset)])
            )
            with trio.fail_after(WITHIN):
                await h.shutdown(10)
                with pytest.raises(Unavailable, match="consume again"):
                    await _drain(stream)
    async with (
        harness(broker) as h,
        h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream,
    ):
        with trio.fail_after(WITHIN):
            again = await stream.receive()
    assert again is not None
    assert again.value == b"b"


async def _drain(stream: Any) -> None:
    while True:
        await stream.receive()
