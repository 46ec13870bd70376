"""kv.bulk: get_many, set_many, delete_many — many keys per call, per-item results in request
order, the request itself validated before anything is written."""

from __future__ import annotations

from kit import Ctx, check, expect_status

from prism._proto.prism.data.v1 import (
    DeleteManyRequest,
    DeleteRequest,
    GetManyRequest,
    SetManyRequest,
    SetRequest,
)
from prism.grpc.wire.status import Status


@check("kv.bulk")
async def set_many_then_get_many_round_trip(ctx: Ctx) -> None:
    items = [SetRequest(key=ctx.key(f"k{i}"), value=f"v{i}".encode()) for i in range(50)]
    result = await ctx.call("set_many", SetManyRequest(items=items))
    assert [r.code for r in result.results] == [Status.OK] * 50
    got = await ctx.call("get_many", GetManyRequest(keys=[i.key for i in items]))
    assert [(g.found, g.value) for g in got.items] == [(True, i.value) for i in items]
    for item in items[::7]:
        assert await ctx.stored(item.key) == item.value


@check("kv.bulk")
async def get_many_answers_in_request_order(ctx: Ctx) -> None:
    """Items come back in the order asked, missing keys and repeats included."""
    await ctx.call(
        "set_many",
        SetManyRequest(items=[SetRequest(key=ctx.key(k), value=k.encode()) for k in "abc"]),
    )
    keys = [ctx.key(k) for k in ("c", "missing", "a", "c", "b")]
    got = await ctx.call("get_many", GetManyRequest(keys=keys))
    assert [(g.found, g.value) for g in got.items] == [
        (True, b"c"),
        (False, b""),
        (True, b"a"),
        (True, b"c"),
        (True, b"b"),
    ]


@check("kv.bulk")
async def delete_many_reports_each_item(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key("a"), value=b"1"))
    result = await ctx.call(
        "delete_many",
        DeleteManyRequest(items=[DeleteRequest(key=ctx.key("a")), DeleteRequest(key=ctx.key("b"))]),
    )
    assert [(r.code, r.deleted) for r in result.results] == [(0, True), (0, False)]
    assert await ctx.stored(ctx.key("a")) is None


@check("kv.bulk")
async def empty_bulk_requests_answer_empty(ctx: Ctx) -> None:
    assert list((await ctx.call("get_many", GetManyRequest())).items) == []
    assert list((await ctx.call("set_many", SetManyRequest())).results) == []
    assert list((await ctx.call("delete_many", DeleteManyRequest())).results) == []


@check("kv.bulk")
async def an_invalid_item_fails_the_whole_call_before_anything_is_written(ctx: Ctx) -> None:
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call(
            "set_many",
            SetManyRequest(
                items=[SetRequest(key=ctx.key("ok"), value=b"1"), SetRequest(key="", value=b"1")]
            ),
        )
    assert await ctx.stored(ctx.key("ok")) is None
    too_many = ctx.limits.max_batch + 1
    with expect_status(Status.INVALID_ARGUMENT, "limit"):
        await ctx.call(
            "set_many",
            SetManyRequest(
                items=[SetRequest(key=ctx.key(f"n{i}"), value=b"1") for i in range(too_many)]
            ),
        )
    assert await ctx.stored(ctx.key("n0")) is None
    with expect_status(Status.INVALID_ARGUMENT, "limit"):
        await ctx.call("get_many", GetManyRequest(keys=[ctx.key("x")] * too_many))
