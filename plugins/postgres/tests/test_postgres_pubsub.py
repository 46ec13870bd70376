"""Publish/subscribe on LISTEN/NOTIFY beyond the acceptance suite: NOTIFY's payload limit, a
subscriber that falls behind, a LISTEN connection the server ends (prism_plugin_postgres.listen)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from backends import PostgresServer
from conftest import config_for
from prism_plugin_postgres import PostgresPlugin
from prism_plugin_postgres.listen import channel

from prism._proto.prism.data.v1 import PublishRequest, SubscribeRequest
from prism.sdk import InvalidArgument, ResourceExhausted, Unavailable
from prism.sdk.testing import PluginHarness


@asynccontextmanager
async def subscribed(h: PluginHarness, topic: str) -> AsyncIterator[Any]:
    async with h.stream("subscribe", SubscribeRequest(topic=topic)) as stream:
        listener = h.plugin._listener
        assert listener is not None
        with trio.fail_after(30):
            while channel(topic) not in listener._channels:  # noqa: ASYNC110 - its own task
                await trio.sleep(0.01)
            await listener._channels[channel(topic)].listening.wait()
        yield stream


async def drain(stream: Any) -> None:
    while await stream.receive() is not None:
        pass


async def test_pubsub_a_message_over_notifys_limit_is_invalid_argument(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        with pytest.raises(InvalidArgument, match="once encoded for NOTIFY"):
            await h.execute("publish", PublishRequest(topic="t", payload=b"x" * 6000))
        done = await h.execute("publish", PublishRequest(topic="t", payload=b"x" * 5000))
        assert done.sequence == 1  # type: ignore[union-attr]


async def test_pubsub_a_subscriber_that_falls_behind_ends_resource_exhausted(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, subscriber_buffer=2)
    async with (
        PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h,
        subscribed(h, "slow") as stream,
    ):
        for i in range(5):
            await h.execute("publish", PublishRequest(topic="slow", payload=b"%d" % i))
        with trio.fail_after(30), pytest.raises(ResourceExhausted, match="fell more than 2"):
            await drain(stream)


async def test_pubsub_a_lost_listen_connection_ends_subscriptions_unavailable(
    postgres: PostgresServer, config: dict[str, Any], credentials: dict[str, str]
) -> None:
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        async with subscribed(h, "t") as stream:
            await h.execute("publish", PublishRequest(topic="t", payload=b"first"))
            assert (await stream.receive()).payload == b"first"
            postgres.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                (config["application_name"],),
            )
            with trio.fail_after(30), pytest.raises(Unavailable, match="subscribe again"):
                await stream.receive()
        async with subscribed(h, "t") as stream:  # a new subscription gets a new connection
            await h.execute("publish", PublishRequest(topic="t", payload=b"again"))
            message = await stream.receive()
            assert (message.payload, message.sequence) == (b"again", 2)
