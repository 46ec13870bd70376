"""kv.basic: get, set, delete, exists — and the limits every key-value plugin enforces."""

from __future__ import annotations

import trio
from kit import Ctx, check, expect_status

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    ExistsRequest,
    GetRequest,
    SetRequest,
)
from prism.grpc.wire.status import Status


@check("kv.basic")
async def set_then_get_returns_the_value_stored_in_the_backend(ctx: Ctx) -> None:
    """Binary and empty values round-trip, and the backend holds exactly those bytes."""
    for name, value in (("binary", bytes(range(256)) * 4), ("empty", b""), ("text", b"v")):
        await ctx.call("set", SetRequest(key=ctx.key(name), value=value))
        got = await ctx.call("get", GetRequest(key=ctx.key(name)))
        assert (got.found, got.value) == (True, value)
        assert await ctx.stored(ctx.key(name)) == value


@check("kv.basic")
async def get_of_a_missing_key_is_not_found(ctx: Ctx) -> None:
    got = await ctx.call("get", GetRequest(key=ctx.key("never")))
    assert (got.found, got.value) == (False, b"")
    assert await ctx.stored(ctx.key("never")) is None


@check("kv.basic")
async def set_overwrites(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"2"))
    assert (await ctx.call("get", GetRequest(key=ctx.key()))).value == b"2"
    assert await ctx.stored(ctx.key()) == b"2"


@check("kv.basic")
async def delete_reports_whether_a_live_key_was_removed(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    assert (await ctx.call("delete", DeleteRequest(key=ctx.key()))).deleted is True
    assert await ctx.stored(ctx.key()) is None
    assert (await ctx.call("delete", DeleteRequest(key=ctx.key()))).deleted is False
    assert (await ctx.call("delete", DeleteRequest(key=ctx.key("never")))).deleted is False
    assert not (await ctx.call("get", GetRequest(key=ctx.key()))).found


@check("kv.basic")
async def exists_follows_set_and_delete(ctx: Ctx) -> None:
    assert not (await ctx.call("exists", ExistsRequest(key=ctx.key()))).exists
    await ctx.call("set", SetRequest(key=ctx.key(), value=b""))
    assert (await ctx.call("exists", ExistsRequest(key=ctx.key()))).exists
    await ctx.call("delete", DeleteRequest(key=ctx.key()))
    assert not (await ctx.call("exists", ExistsRequest(key=ctx.key()))).exists


@check("kv.basic")
async def unicode_keys_are_distinct_and_exact(ctx: Ctx) -> None:
    names = ["ключ", "ключ ", "Ключ", "键/值", "emoji-🔑", "nul\x00byte"]
    for i, name in enumerate(names):
        await ctx.call("set", SetRequest(key=ctx.key(name), value=str(i).encode()))
    for i, name in enumerate(names):
        assert (await ctx.call("get", GetRequest(key=ctx.key(name)))).value == str(i).encode()
        assert await ctx.stored(ctx.key(name)) == str(i).encode()


@check("kv.basic")
async def an_empty_key_is_invalid_argument(ctx: Ctx) -> None:
    for op, params in (
        ("get", GetRequest(key="")),
        ("set", SetRequest(key="", value=b"1")),
        ("delete", DeleteRequest(key="")),
        ("exists", ExistsRequest(key="")),
    ):
        with expect_status(Status.INVALID_ARGUMENT, "empty"):
            await ctx.call(op, params)


@check("kv.basic")
async def keys_and_values_over_the_limits_are_refused_and_store_nothing(ctx: Ctx) -> None:
    """Over the plugin's limits (config, with defaults) → INVALID_ARGUMENT: a 1 MiB key is
    refused everywhere, and nothing reaches the backend."""
    limits = ctx.limits
    one_mib_key = ctx.key("k" * (1 << 20))
    just_over = ctx.key("k" * (limits.max_key_bytes + 1 - len(ctx.key().encode())))
    for key in (one_mib_key, just_over):
        with expect_status(Status.INVALID_ARGUMENT, "limit"):
            await ctx.call("set", SetRequest(key=key, value=b"1"))
        with expect_status(Status.INVALID_ARGUMENT, "limit"):
            await ctx.call("get", GetRequest(key=key))
    at_limit = ctx.key("k" * (limits.max_key_bytes - len(ctx.key().encode())))
    await ctx.call("set", SetRequest(key=at_limit, value=b"1"))
    assert await ctx.stored(at_limit) == b"1"
    with expect_status(Status.INVALID_ARGUMENT, "limit"):
        await ctx.call(
            "set", SetRequest(key=ctx.key("big"), value=b"v" * (limits.max_value_bytes + 1))
        )
    assert await ctx.stored(ctx.key("big")) is None


@check("kv.basic")
async def concurrent_writers_to_distinct_keys_all_land(ctx: Ctx) -> None:
    async def write(i: int) -> None:
        await ctx.call("set", SetRequest(key=ctx.key(f"c{i}"), value=str(i).encode()))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(write, i)
    for i in range(20):
        assert await ctx.stored(ctx.key(f"c{i}")) == str(i).encode()
