"""Malformed params through the proxy's front door, as a client would send them to ``prism
serve``: INVALID_ARGUMENT saying what is wrong, nothing stored, the connection still serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prism_serve import prism_serve

from prism import grpc as pg
from prism._proto.google.protobuf import Any
from prism._proto.prism.data.v1 import (
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    SetRequest,
)
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.sdk.typed import pack, type_url, unpack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
# SetRequest.key (field 1) declared as 5 bytes with 2 present: betterproto2 alone reads "ab".
TRUNCATED_SET = bytes.fromhex("0a056162")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prism_serve(tmp_path_factory.mktemp("prism")) as target:
        yield target


async def _execute(channel: pg.Channel, namespace: str, operation: str, params: Any) -> object:
    reply: ExecuteResponse = await channel.unary_unary(
        EXECUTE,
        ExecuteRequest(namespace=namespace, operation=operation, typed_params=params),
        ExecuteResponse,
    )
    return reply.typed_result


@pytest.mark.parametrize("namespace", ["kv", "durable"])
async def test_app_truncated_params_are_invalid_argument_and_store_nothing(
    target: str, namespace: str
) -> None:
    params = Any(type_url=type_url(SetRequest), value=TRUNCATED_SET)
    with trio.fail_after(30):
        async with pg.open_channel(target) as channel:
            with pytest.raises(pg.InvalidArgument) as info:
                await _execute(channel, namespace, "set", params)
            assert info.value.status is pg.Status.INVALID_ARGUMENT
            assert info.value.message == (
                "operation 'set' params: expected prism.data.v1.SetRequest, got malformed "
                "bytes: field 1 (key) runs past the end of its message"
            )
            # Same connection: nothing was stored under what a lenient decoder reads.
            got = await _execute(channel, namespace, "get", pack(GetRequest(key="ab")))
            assert unpack(got, GetResponse) == GetResponse(found=False)  # type: ignore[arg-type]
            keys = await _execute(channel, namespace, "list_keys", pack(ListKeysRequest()))
            assert unpack(keys, ListKeysResponse).keys == []  # type: ignore[arg-type]


async def test_app_malformed_envelope_is_invalid_argument_and_the_connection_serves_on(
    target: str, tmp_path: Path
) -> None:
    # A metadata entry whose value is not UTF-8, in an otherwise good request.
    good = ExecuteRequest(namespace="kv", operation="get", typed_params=pack(GetRequest(key="k")))
    bad = bytes(good) + b"\x22\x04\x12\x02\xc0\x80"
    with trio.fail_after(30):
        async with pg.open_channel(target) as channel:
            with pytest.raises(pg.InvalidArgument) as info:
                await channel.unary_unary(EXECUTE, bad, ExecuteResponse)
            assert "UTF-8" in info.value.message
            reply = await channel.unary_unary(EXECUTE, good, ExecuteResponse)
            assert unpack(reply.typed_result, GetResponse) == GetResponse(found=False)
