"""The nats plugin on a real nats-server (the acceptance framework's fixture), through the
SDK's harness: what the conformance suites do not cover — its config and credential checks,
its own names for topics, reserved headers, streams it may not create, and a shutdown handing
back what a consume stream held."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "acceptance"))

from backends import NatsServer, free_port
from prism_plugin_nats import NatsPlugin
from prism_plugin_nats.names import escape

from prism._proto.prism.data.v1 import (
    ConsumeAck,
    ConsumeRequest,
    Message,
    ProduceRequest,
    PublishRequest,
    RecordPosition,
    SubscribeRequest,
)
from prism.sdk import InvalidArgument, NotFound, ResourceExhausted, Unauthenticated, Unavailable
from prism.sdk.testing import PluginHarness


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    nats = NatsServer()
    try:
        nats.start()
        yield nats
    finally:
        nats.stop()


def harness(server: NatsServer, **config: Any) -> PluginHarness:
    settings = {"port": server.connection["port"], "fetch_wait_ms": 200, **config}
    return PluginHarness(NatsPlugin, config=settings, credentials=server.credentials.as_map())


def test_nats_escape_is_one_to_one_and_nats_safe() -> None:
    names = ["a.b", "a_2eb", "a b", "a*", "a>", "ü", "a-b", "A"]
    escaped = [escape("topic", n) for n in names]
    assert len(set(escaped)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", e) for e in escaped)
    assert escape("topic", "orders-1") == "orders-1"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"port": -1}, "port"),
        ({"ack_wait_ms": -5}, "ack_wait_ms"),
        ({"subject_prefix": "a b"}, "subject_prefix"),
        ({"stream_prefix": "a.b"}, "stream_prefix"),
        ({"default_max_in_flight": 50, "max_in_flight_limit": 10}, "default_max_in_flight"),
    ],
)
async def test_nats_initialize_refuses_bad_config(
    server: NatsServer, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        async with harness(server, **config):
            pass


async def test_nats_initialize_needs_both_credentials_unless_anonymous(server: NatsServer) -> None:
    port = server.connection["port"]
    user = server.credentials.username
    with pytest.raises(InvalidArgument, match="credential"):
        async with PluginHarness(NatsPlugin, config={"port": port}, credentials={"username": user}):
            pass
    # anonymous on a server with authorization: the server refuses.
    with pytest.raises(Unauthenticated) as caught:
        async with PluginHarness(NatsPlugin, config={"port": port, "anonymous": True}):
            pass
    assert server.credentials.password not in str(caught.value)


async def test_nats_initialize_without_a_server_is_unavailable() -> None:
    config = {"port": free_port(), "anonymous": True, "connect_timeout_ms": 2000}
    with pytest.raises(Unavailable):
        async with PluginHarness(NatsPlugin, config=config):
            pass


async def test_nats_headers_named_prism_are_reserved(server: NatsServer) -> None:
    async with harness(server) as h:
        with pytest.raises(InvalidArgument, match="reserved"):
            await h.execute(
                "produce", ProduceRequest(topic="t", value=b"x", headers={"Prism-Key": "k"})
            )
        with pytest.raises(InvalidArgument, match="reserved"):
            await h.execute(
                "publish", PublishRequest(topic="t", payload=b"x", headers={"prism-seq": "9"})
            )


async def test_nats_slow_subscriber_is_cut_off_with_resource_exhausted(server: NatsServer) -> None:
    """A subscriber that does not read falls behind: once nats-py's buffer of it is full and a
    message would be dropped, the subscriber is disconnected with RESOURCE_EXHAUSTED, and what
    it reads before that is a gap-free prefix of what was published (never a silent loss)."""
    async with (
        harness(server, subscriber_buffer=8) as h,
        h.stream("subscribe", SubscribeRequest(topic="slow")) as slow,
        h.stream("subscribe", SubscribeRequest(topic="slow")) as fast,
    ):
        for i in range(50):
            await h.execute("publish", PublishRequest(topic="slow", payload=str(i).encode()))
            with trio.fail_after(30):
                message = await fast.receive()
            assert isinstance(message, Message)
            assert message.sequence == i + 1
        sequences = []
        with pytest.raises(ResourceExhausted, match="fell more than 8 messages behind"):  # noqa: PT012
            with trio.fail_after(30):
                while True:
                    message = await slow.receive()
                    assert isinstance(message, Message)
                    sequences.append(message.sequence)
        assert sequences == list(range(1, len(sequences) + 1))
        assert len(sequences) < 50


async def test_nats_no_create_streams_makes_an_unknown_topic_not_found(server: NatsServer) -> None:
    async with harness(server, no_create_streams=True) as h:
        with pytest.raises(NotFound, match="no JetStream stream"):
            await h.execute("produce", ProduceRequest(topic="never-created", value=b"x"))


async def test_nats_topic_is_its_own_stream_under_the_prefix(server: NatsServer) -> None:
    async with harness(server, stream_prefix="mine-", subject_prefix="app.one") as h:
        await h.execute("produce", ProduceRequest(topic="a.b c", value=b"x"))

    async def info(nc: Any) -> Any:
        return await nc.jetstream().stream_info("mine-a_2eb_20c")

    stream = await trio.to_thread.run_sync(server.run, None, info)
    assert stream.config.subjects == ["app.one.log.a_2eb_20c"]
    assert stream.state.messages == 1


async def test_nats_max_in_flight_over_the_limit_is_invalid(server: NatsServer) -> None:
    async with harness(server, max_in_flight_limit=10, default_max_in_flight=5) as h:
        with pytest.raises(InvalidArgument, match="max_in_flight"):
            async with h.stream(
                "consume", ConsumeRequest(topic="t", group="g", max_in_flight=11)
            ) as s:
                await s.receive()


async def test_nats_shutdown_ends_consume_streams_and_hands_back_their_records(
    server: NatsServer,
) -> None:
    topic = "handed-back"
    async with harness(server) as h:
        for value in (b"a", b"b"):
            await h.execute("produce", ProduceRequest(topic=topic, value=value))
        async with h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream:
            with trio.fail_after(30):
                held = [await stream.receive(), await stream.receive()]
            await stream.send(ConsumeAck(records=[RecordPosition(offset=held[0].offset)]))  # type: ignore[union-attr]
            with trio.fail_after(30):
                await h.shutdown(5)
                with pytest.raises(Unavailable, match="consume again"):
                    await stream.receive()
    async with (
        harness(server) as h,
        h.stream("consume", ConsumeRequest(topic=topic, group="g")) as stream,
    ):
        with trio.fail_after(30):
            again = await stream.receive()
    assert again is not None
    assert again.value == b"b"
