"""The Prism proxy hosts the asyncio/grpclib plugin as a sidecar, configured only by its
command, and clients use it through the front door like any other plugin.

The test side is Prism (Trio); the plugin process is asyncio + grpclib and imports neither.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import betterproto2
import pytest
import trio

from prism import grpc as pg
from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    SetRequest,
)
from prism._proto.prism.proxy.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
)
from prism.config import parse_config
from prism.hosting.host import PluginStartFailed
from prism.proxy.app import Proxy
from prism.sdk import pack, unpack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"
COMMAND = [sys.executable, "-m", "prism_plugin_asyncio_kv"]


def config(plugin_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "name": "kv",
        "plugin": {"name": "asyncio_kv", "mode": "sidecar", "command": COMMAND},
    }
    if plugin_config is not None:
        namespace["config"] = dict(plugin_config)
    return {
        "listen": "127.0.0.1:0",
        "admin": {"enabled": False},
        "shutdown_grace": 2,
        "namespaces": [namespace],
    }


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            running: Proxy = await nursery.start(Proxy(parse_config(config({"max_keys": 2}))).run)
        yield running
        with trio.fail_after(30):
            await running.stop()


@pytest.fixture
async def channel(proxy: Proxy) -> AsyncIterator[pg.Channel]:
    assert proxy.address is not None
    async with pg.open_channel("{}:{}".format(*proxy.address)) as channel:
        yield channel


async def execute(
    channel: pg.Channel, operation: str, params: betterproto2.Message
) -> ExecuteResponse:
    request = ExecuteRequest(namespace="kv", operation=operation, typed_params=pack(params))
    with trio.fail_after(10):
        response: ExecuteResponse = await channel.unary_unary(EXECUTE, request, ExecuteResponse)
    return response


async def test_asyncio_kv_hosted_set_get_delete_through_the_front_door(
    channel: pg.Channel,
) -> None:
    await execute(channel, "set", SetRequest(key="a", value=b"1"))
    response = await execute(channel, "get", GetRequest(key="a"))
    assert unpack(response.typed_result, GetResponse) == GetResponse(found=True, value=b"1")
    response = await execute(channel, "delete", DeleteRequest(key="a"))
    assert unpack(response.typed_result, DeleteResponse) == DeleteResponse(deleted=True)
    response = await execute(channel, "get", GetRequest(key="a"))
    assert unpack(response.typed_result, GetResponse) == GetResponse(found=False)


async def test_asyncio_kv_hosted_errors_reach_the_client_as_statuses(channel: pg.Channel) -> None:
    with pytest.raises(pg.Unimplemented, match="unknown operation 'query'"):
        await execute(channel, "query", GetRequest(key="a"))
    with pytest.raises(pg.InvalidArgument, match=r"expected prism\.data\.v1\.SetRequest"):
        await execute(channel, "set", GetRequest(key="a"))
    with pytest.raises(pg.InvalidArgument, match="key must not be empty"):
        await execute(channel, "get", GetRequest(key=""))


async def test_asyncio_kv_hosted_namespace_config_reaches_the_plugin(channel: pg.Channel) -> None:
    # max_keys: 2 comes from the namespace's YAML config, as a ConfigDocument.
    await execute(channel, "set", SetRequest(key="a", value=b"1"))
    await execute(channel, "set", SetRequest(key="b", value=b"2"))
    with pytest.raises(pg.ResourceExhausted, match="max_keys = 2"):
        await execute(channel, "set", SetRequest(key="c", value=b"3"))
    await execute(channel, "set", SetRequest(key="a", value=b"overwrite is fine"))


async def test_asyncio_kv_hosted_stream_operation(channel: pg.Channel) -> None:
    await execute(channel, "set", SetRequest(key="a", value=b"1"))
    with trio.fail_after(10):
        async with channel.stream(EXECUTE_STREAM, StreamResponse) as call:
            await call.send_message(
                StreamRequest(
                    namespace="kv", operation="multi_get", typed_params=pack(GetRequest(key="a"))
                )
            )
            first = await call.receive_message()
            assert unpack(first.typed_result, GetResponse) == GetResponse(found=True, value=b"1")
            await call.send_message(StreamRequest(typed_params=pack(GetRequest(key="zz"))))
            second = await call.receive_message()
            assert unpack(second.typed_result, GetResponse) == GetResponse(found=False)
            await call.end()
            final = await call.receive_message()
            assert final.is_final
            assert await call.receive_message() is None


async def test_asyncio_kv_hosted_unknown_stream_operation_is_unimplemented(
    channel: pg.Channel,
) -> None:
    with trio.fail_after(10):
        async with channel.stream(EXECUTE_STREAM, StreamResponse) as call:
            await call.send_message(StreamRequest(namespace="kv", operation="subscribe"))
            await call.end()
            with pytest.raises(pg.Unimplemented, match="unknown stream operation 'subscribe'"):
                await call.receive_message()


def _errors(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes, and everything inside the exception groups among them."""
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _errors(inner)
    if exc.__cause__ is not None:
        yield from _errors(exc.__cause__)


async def test_asyncio_kv_hosted_bad_config_fails_the_start_naming_the_field() -> None:
    proxy = Proxy(parse_config(config({"max_key": 5})))
    with trio.fail_after(30), pytest.raises(BaseException) as info:  # noqa: PT011, PT012
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            nursery.cancel_scope.cancel()  # not reached: the start fails
    messages = [str(e) for e in _errors(info.value) if isinstance(e, PluginStartFailed)]
    # The plugin (not on the SDK) says "config field 'max_key' is unknown"; the proxy puts the
    # field in its file: namespaces[N].config.FIELD.
    expected = "refused to initialize: namespaces[0].config.max_key: is unknown (known: max_keys)"
    assert any(expected in m for m in messages), messages
