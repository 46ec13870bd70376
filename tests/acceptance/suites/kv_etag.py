"""kv.etag: optimistic concurrency. get and set return etags; set/delete with if_match, set
with if_absent; a failed condition is ABORTED and writes nothing."""

from __future__ import annotations

import trio
from kit import Ctx, check, expect_status

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    GetManyRequest,
    GetRequest,
    SetManyRequest,
    SetRequest,
)
from prism.grpc.wire.status import GrpcError, Status


async def etag_of(ctx: Ctx, key: str) -> str:
    got = await ctx.call("get", GetRequest(key=key))
    assert got.found
    return str(got.etag)


@check("kv.etag")
async def get_and_set_return_the_same_non_empty_etag(ctx: Ctx) -> None:
    written = await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    assert written.etag
    assert await etag_of(ctx, ctx.key()) == written.etag
    assert (await ctx.call("get", GetRequest(key=ctx.key("missing")))).etag == ""


@check("kv.etag")
async def every_write_gives_a_new_etag_even_of_the_same_bytes(ctx: Ctx) -> None:
    seen = set()
    for _ in range(5):
        seen.add((await ctx.call("set", SetRequest(key=ctx.key(), value=b"same"))).etag)
    assert len(seen) == 5


@check("kv.etag")
async def set_if_match_with_the_current_etag_writes(ctx: Ctx) -> None:
    first = await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    second = await ctx.call("set", SetRequest(key=ctx.key(), value=b"2", if_match=first.etag))
    assert second.etag not in ("", first.etag)
    assert await ctx.stored(ctx.key()) == b"2"
    assert await etag_of(ctx, ctx.key()) == second.etag


@check("kv.etag")
async def set_if_match_mismatch_is_aborted_and_writes_nothing(ctx: Ctx) -> None:
    first = await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"2"))
    for stale in (first.etag, "not-an-etag", "0"):
        with expect_status(Status.ABORTED):
            await ctx.call("set", SetRequest(key=ctx.key(), value=b"3", if_match=stale))
    assert await ctx.stored(ctx.key()) == b"2"


@check("kv.etag")
async def set_if_match_on_a_missing_key_is_aborted_and_creates_nothing(ctx: Ctx) -> None:
    written = await ctx.call("set", SetRequest(key=ctx.key("other"), value=b"1"))
    with expect_status(Status.ABORTED):
        await ctx.call("set", SetRequest(key=ctx.key(), value=b"1", if_match=written.etag))
    assert await ctx.stored(ctx.key()) is None


@check("kv.etag")
async def set_if_absent_first_write_wins(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"first", if_absent=True))
    with expect_status(Status.ABORTED):
        await ctx.call("set", SetRequest(key=ctx.key(), value=b"second", if_absent=True))
    assert await ctx.stored(ctx.key()) == b"first"
    await ctx.call("delete", DeleteRequest(key=ctx.key()))
    await ctx.call("set", SetRequest(key=ctx.key(), value=b"again", if_absent=True))
    assert await ctx.stored(ctx.key()) == b"again"


@check("kv.etag")
async def delete_if_match_deletes_only_that_version(ctx: Ctx) -> None:
    first = await ctx.call("set", SetRequest(key=ctx.key(), value=b"1"))
    second = await ctx.call("set", SetRequest(key=ctx.key(), value=b"2"))
    with expect_status(Status.ABORTED):
        await ctx.call("delete", DeleteRequest(key=ctx.key(), if_match=first.etag))
    assert await ctx.stored(ctx.key()) == b"2"
    deleted = await ctx.call("delete", DeleteRequest(key=ctx.key(), if_match=second.etag))
    assert deleted.deleted
    assert await ctx.stored(ctx.key()) is None
    with expect_status(Status.ABORTED):
        await ctx.call("delete", DeleteRequest(key=ctx.key(), if_match=second.etag))


@check("kv.etag")
async def concurrent_conditional_writers_exactly_one_wins(ctx: Ctx) -> None:
    base = await ctx.call("set", SetRequest(key=ctx.key(), value=b"base"))
    winners: list[bytes] = []
    losers: list[GrpcError] = []

    async def write(i: int) -> None:
        value = f"writer-{i}".encode()
        try:
            await ctx.call("set", SetRequest(key=ctx.key(), value=value, if_match=base.etag))
        except GrpcError as exc:
            losers.append(exc)
        else:
            winners.append(value)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(write, i)
    assert len(winners) == 1, f"{len(winners)} writers won with the same etag"
    assert {e.status for e in losers} == {Status.ABORTED}
    assert await ctx.stored(ctx.key()) == winners[0]


@check("kv.etag", needs=("set_many:etag", "get_many:etag"))
async def bulk_items_fail_alone_on_their_conditions(ctx: Ctx) -> None:
    a = await ctx.call("set", SetRequest(key=ctx.key("a"), value=b"1"))
    await ctx.call("set", SetRequest(key=ctx.key("b"), value=b"1"))
    result = await ctx.call(
        "set_many",
        SetManyRequest(
            items=[
                SetRequest(key=ctx.key("a"), value=b"2", if_match=a.etag),
                SetRequest(key=ctx.key("b"), value=b"2", if_match="stale"),
                SetRequest(key=ctx.key("c"), value=b"2", if_absent=True),
            ]
        ),
    )
    assert [r.code for r in result.results] == [Status.OK, Status.ABORTED, Status.OK]
    assert result.results[0].etag
    assert [await ctx.stored(ctx.key(k)) for k in "abc"] == [b"2", b"1", b"2"]
    got = await ctx.call("get_many", GetManyRequest(keys=[ctx.key("a"), ctx.key("c")]))
    assert got.items[0].etag == result.results[0].etag
    assert got.items[1].etag == result.results[2].etag
