"""Pub/sub through the front door with memstore behind it, in-process and as a sidecar: a
subscriber that stops reading is cut off, and promptly, while the publisher and the other
subscribers go on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from host_testkit import proxy_config, running_proxy
from test_frontdoor import read_until_error

from prism import grpc as pg
from prism._proto.prism.data.v1 import Message, PublishRequest, PublishResponse, SubscribeRequest
from prism._proto.prism.proxy.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
)
from prism.config import NamespaceConfig, PluginConfig
from prism.config.auth import AccessConfig
from prism.sdk.typed import pack, unpack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"
BUFFER = 16  # memstore's subscriber_buffer
SIZE = 8 << 10  # payload bytes: the proxy's 1 MiB of held-back output is 128 messages
WINDOW = 65535  # the stalled client's flow-control windows


@asynccontextmanager
async def running(mode: str) -> AsyncIterator[str]:
    ps = NamespaceConfig(
        name="ps",
        plugin=PluginConfig(name="memstore", mode=mode),
        config={"subscriber_buffer": BUFFER},
        access=AccessConfig(anonymous=True),
    )
    async with running_proxy(proxy_config(ps, shutdown_grace=1.0)) as proxy:
        yield proxy.target


async def publish(channel: pg.Channel, payload: bytes) -> int:
    request = ExecuteRequest(
        namespace="ps",
        operation="publish",
        typed_params=pack(PublishRequest(topic="t", payload=payload)),
    )
    response: ExecuteResponse = await channel.unary_unary(EXECUTE, request, ExecuteResponse)
    return unpack(response.typed_result, PublishResponse).sequence


def message_of(response: StreamResponse) -> Message:
    return unpack(response.typed_result, Message)


SUBSCRIBE = StreamRequest(
    namespace="ps", operation="subscribe", typed_params=pack(SubscribeRequest(topic="t"))
)


# What may still reach a stalled client after memstore cut it off: what its own flow-control
# windows had taken in (prism's client keeps acknowledging while less than a window waits to be
# read: 2-3 windows in all) and the rest of one message; not the proxy's held-back 1 MiB (128
# messages) nor memstore's 16 (155 came through before the cut-off existed). The same through a
# sidecar: the sidecar ends its stream at once (ServerCall.end_at_once: trailers, or a reset
# when a message is half-sent), the proxy's relay stops on that status even while it waits on
# this very client, and the front door ends the client's stream at once too (527 came through
# before the cut-off existed, 139-220 while the sidecar kept the rest of a message begun).
AFTER_CUT = 3 * WINDOW // SIZE + 1


@pytest.mark.parametrize(("mode", "published"), [("in_process", 400), ("sidecar", 800)])
async def test_frontdoor_pubsub_cuts_off_a_subscriber_that_stops_reading(
    mode: str, published: int
) -> None:
    stalled_options = pg.ChannelOptions(initial_window_size=WINDOW, connection_window_size=WINDOW)
    with trio.fail_after(120):  # catches a hang, not a speed
        async with (
            running(mode) as target,
            pg.open_channel(target) as channel,
            pg.open_channel(target, options=stalled_options) as stalled_channel,
            stalled_channel.stream(EXECUTE_STREAM, StreamResponse) as stalled,
            channel.stream(EXECUTE_STREAM, StreamResponse) as reader,
            trio.open_nursery() as nursery,
        ):
            await stalled.send_message(SUBSCRIBE)
            await reader.send_message(SUBSCRIBE)
            sequences: list[int] = []
            reading, caught_up = trio.Event(), trio.Event()
            last = -1  # the last sequence number published, once known

            async def read_all() -> None:
                async for response in reader:
                    sequences.append(message_of(response).sequence)
                    reading.set()
                    if sequences[-1] == last:
                        caught_up.set()

            nursery.start_soon(read_all)
            # Publish until both subscriptions are in place (either may come first): the
            # stalled one reads one message, and no more.
            stalled_has_one = False
            while not (stalled_has_one and reading.is_set()):
                await publish(channel, b"warm-up")
                with trio.move_on_after(0.05):
                    if stalled_has_one:
                        await reading.wait()
                    else:
                        await stalled.receive_message()
                        stalled_has_one = True
            first = await publish(channel, b"p" * SIZE)
            for i in range(1, published):
                # The publisher is never held up: every publish is sequenced and answered.
                assert await publish(channel, b"p" * SIZE) == first + i
            last = first + published - 1
            if sequences[-1] != last:
                await caught_up.wait()
            assert sequences == list(range(sequences[0], last + 1))
            # The proxy ends the stalled client's stream without waiting for it to read (a
            # client that never reads again holds nothing there): its status is in already.
            await stalled.wait_ended()
            received, error = await read_until_error(stalled)
            nursery.cancel_scope.cancel()
    assert isinstance(error, pg.ResourceExhausted)
    # The status's message, unless the stream had to be reset (a message was half-sent):
    # RST_STREAM(ENHANCE_YOUR_CALM) carries none, and gRPC reads it as RESOURCE_EXHAUSTED.
    assert "fell more than 16 messages behind" in error.message or (
        "ENHANCE_YOUR_CALM" in error.message
    )
    print("RECEIVED", mode, received, error.message)
    assert received <= AFTER_CUT
