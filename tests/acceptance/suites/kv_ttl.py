"""kv.ttl: ttl_ms on set, expire (and persist), and the remaining TTL where the plugin
declares get's "ttl" feature. Real time passes here (the suites also run against other
processes): expiry is awaited by polling, never timed."""

from __future__ import annotations

from kit import Ctx, check, eventually, expect_status

from prism._proto.prism.data.v1 import ExpireRequest, GetRequest, SetRequest
from prism.grpc.wire.status import Status

LONG = 600_000  # ms: never reached during a run


async def gone(ctx: Ctx, key: str) -> bool:
    return not (await ctx.call("get", GetRequest(key=key))).found


async def check_ttl_near(ctx: Ctx, key: str, ttl_ms: int) -> None:
    if ctx.has("get:ttl"):
        remaining = (await ctx.call("get", GetRequest(key=key))).ttl_remaining_ms
        assert remaining is not None
        assert 0 < remaining <= ttl_ms
    backend = await ctx.backend_ttl_ms(key)
    if backend is not NotImplemented:
        assert backend is not None
        assert 0 < backend <= ttl_ms


async def check_no_ttl(ctx: Ctx, key: str) -> None:
    if ctx.has("get:ttl"):
        assert (await ctx.call("get", GetRequest(key=key))).ttl_remaining_ms is None
    backend = await ctx.backend_ttl_ms(key)
    if backend is not NotImplemented:
        assert backend is None


@check("kv.ttl")
async def a_key_set_with_ttl_expires(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1", ttl_ms=200))
    await eventually(lambda: gone(ctx, ctx.key()), "a key set with ttl_ms=200 is gone")
    assert await ctx.stored(ctx.key()) is None


@check("kv.ttl")
async def a_key_with_a_long_ttl_reports_it(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1", ttl_ms=LONG))
    assert (await ctx.call("get", GetRequest(key=ctx.key()))).found
    await check_ttl_near(ctx, ctx.key(), LONG)


@check("kv.ttl")
async def a_plain_set_replaces_the_ttl(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1", ttl_ms=LONG))
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"2"))
    await check_no_ttl(ctx, ctx.key())


@check("kv.ttl")
async def expire_sets_the_ttl_and_persist_removes_it(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    await check_no_ttl(ctx, ctx.key())
    assert (await ctx.call("expire", ExpireRequest(key=ctx.key(), ttl_ms=LONG))).found
    await check_ttl_near(ctx, ctx.key(), LONG)
    assert (await ctx.call("expire", ExpireRequest(key=ctx.key(), persist=True))).found
    await check_no_ttl(ctx, ctx.key())
    assert await ctx.stored(ctx.key()) == b"1"


@check("kv.ttl")
async def expire_makes_a_key_expire(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    await ctx.call("expire", ExpireRequest(key=ctx.key(), ttl_ms=200))
    await eventually(lambda: gone(ctx, ctx.key()), "a key given expire(200 ms) is gone")


@check("kv.ttl")
async def expire_of_a_missing_key_is_not_found(ctx: Ctx) -> None:
    assert not (await ctx.call("expire", ExpireRequest(key=ctx.key(), ttl_ms=LONG))).found
    assert await ctx.stored(ctx.key()) is None


@check("kv.ttl")
async def a_negative_or_missing_ttl_is_invalid_argument(ctx: Ctx) -> None:
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call("set", SetRequest(key=ctx.key(), value=b"1", ttl_ms=-1))
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call("expire", ExpireRequest(key=ctx.key()))
    assert await ctx.stored(ctx.key()) is None
