"""kv.list: keys by prefix, in code point order, page by page."""

from __future__ import annotations

from kit import Ctx, check

from prism._proto.prism.data.v1 import DeleteRequest, ListKeysRequest, SetRequest


async def put(ctx: Ctx, *names: str, ttl_ms: int = 0) -> None:
    for name in names:
        await ctx.call("set", SetRequest(key=ctx.key(name), value=b"x", ttl_ms=ttl_ms))


@check("kv.list")
async def keys_by_prefix_in_code_point_order(ctx: Ctx) -> None:
    await put(ctx, "p/b", "p/a", "p/中", "p/é", "p/Z", "p0", "q/a")
    page = await ctx.call("list_keys", ListKeysRequest(prefix=ctx.key("p/")))
    assert list(page.keys) == [ctx.key(k) for k in ("p/Z", "p/a", "p/b", "p/é", "p/中")]
    assert not page.truncated


@check("kv.list")
async def pages_follow_start_after_until_not_truncated(ctx: Ctx) -> None:
    names = [f"k{i:02d}" for i in range(7)]
    await put(ctx, *names)
    seen: list[str] = []
    start_after = ""
    pages = 0
    while True:
        page = await ctx.call(
            "list_keys", ListKeysRequest(prefix=ctx.key(), limit=3, start_after=start_after)
        )
        pages += 1
        assert len(page.keys) <= 3
        seen.extend(page.keys)
        if not page.truncated:
            break
        start_after = page.keys[-1]
        assert pages < 10, "pagination does not advance"
    assert seen == [ctx.key(n) for n in names]
    assert pages == 3


@check("kv.list")
async def deleted_keys_are_not_listed(ctx: Ctx) -> None:
    await put(ctx, "a", "b")
    await ctx.call("delete", DeleteRequest(key=ctx.key("a")))
    assert list((await ctx.call("list_keys", ListKeysRequest(prefix=ctx.key()))).keys) == [
        ctx.key("b")
    ]


@check("kv.list", needs=("set:ttl",))
async def expired_keys_are_not_listed(ctx: Ctx) -> None:
    from kit import eventually

    from suites.kv_ttl import gone

    await put(ctx, "short", ttl_ms=100)
    await put(ctx, "long")
    await eventually(lambda: gone(ctx, ctx.key("short")), "the short-lived key expired")
    assert list((await ctx.call("list_keys", ListKeysRequest(prefix=ctx.key()))).keys) == [
        ctx.key("long")
    ]
