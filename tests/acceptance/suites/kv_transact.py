"""kv.transact: sets and deletes applied in order, atomically — all or none."""

from __future__ import annotations

import trio
from kit import Ctx, check, expect_status

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    GetManyRequest,
    GetRequest,
    SetRequest,
    TransactOperation,
    TransactRequest,
)
from prism.grpc.wire.status import Status


def tx(*ops: SetRequest | DeleteRequest) -> TransactRequest:
    return TransactRequest(
        operations=[
            TransactOperation(set=op)
            if isinstance(op, SetRequest)
            else TransactOperation(delete=op)
            for op in ops
        ]
    )


@check("kv.transact")
async def every_operation_applies(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key("old"), value=b"x"))
    result = await ctx.call(
        "transact",
        tx(
            SetRequest(key=ctx.key("a"), value=b"1"),
            SetRequest(key=ctx.key("b"), value=b"2"),
            DeleteRequest(key=ctx.key("old")),
            DeleteRequest(key=ctx.key("never")),
        ),
    )
    assert [r.code for r in result.results] == [0, 0, 0, 0]
    assert [r.deleted for r in result.results[2:]] == [True, False]
    assert await ctx.stored(ctx.key("a")) == b"1"
    assert await ctx.stored(ctx.key("b")) == b"2"
    assert await ctx.stored(ctx.key("old")) is None


@check("kv.transact", needs=("transact:etag",))
async def a_failed_condition_aborts_the_whole_transaction(ctx: Ctx) -> None:
    await ctx.call("set", SetRequest(key=ctx.key("taken"), value=b"keep"))
    await ctx.call("set", SetRequest(key=ctx.key("doomed"), value=b"keep"))
    with expect_status(Status.ABORTED, "operation 2"):
        await ctx.call(
            "transact",
            tx(
                SetRequest(key=ctx.key("new"), value=b"1"),
                DeleteRequest(key=ctx.key("doomed")),
                SetRequest(key=ctx.key("taken"), value=b"2", if_absent=True),
            ),
        )
    assert await ctx.stored(ctx.key("new")) is None
    assert await ctx.stored(ctx.key("doomed")) == b"keep"
    assert await ctx.stored(ctx.key("taken")) == b"keep"


@check("kv.transact", needs=("transact:etag",))
async def conditions_see_the_state_before_and_earlier_operations(ctx: Ctx) -> None:
    current = await ctx.call("set", SetRequest(key=ctx.key("a"), value=b"0"))
    result = await ctx.call(
        "transact",
        tx(
            SetRequest(key=ctx.key("a"), value=b"1", if_match=current.etag),
            DeleteRequest(key=ctx.key("a")),
            SetRequest(key=ctx.key("a"), value=b"2", if_absent=True),
        ),
    )
    assert result.results[2].etag
    got = await ctx.call("get", GetRequest(key=ctx.key("a")))
    assert (got.value, got.etag) == (b"2", result.results[2].etag)


@check("kv.transact")
async def later_operations_see_earlier_ones(ctx: Ctx) -> None:
    await ctx.call(
        "transact",
        tx(
            SetRequest(key=ctx.key("a"), value=b"1"),
            SetRequest(key=ctx.key("a"), value=b"2"),
            SetRequest(key=ctx.key("b"), value=b"1"),
            DeleteRequest(key=ctx.key("b")),
        ),
    )
    assert await ctx.stored(ctx.key("a")) == b"2"
    assert await ctx.stored(ctx.key("b")) is None


@check("kv.transact")
async def an_invalid_operation_fails_the_transaction_before_anything_is_written(
    ctx: Ctx,
) -> None:
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call(
            "transact",
            tx(SetRequest(key=ctx.key("a"), value=b"1"), SetRequest(key="", value=b"1")),
        )
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call(
            "transact", TransactRequest(operations=[TransactOperation(), TransactOperation()])
        )
    assert await ctx.stored(ctx.key("a")) is None


@check("kv.transact")
async def concurrent_transactions_never_interleave(ctx: Ctx) -> None:
    """Each transaction writes the same two keys with its own number: whatever the order, the
    two keys always end equal, and every reader between them sees a whole transaction."""
    keys = [ctx.key("x"), ctx.key("y")]

    async def write(i: int) -> None:
        value = str(i).encode()
        await ctx.call("transact", tx(*(SetRequest(key=k, value=value) for k in keys)))

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(write, i)
    assert await ctx.stored(keys[0]) == await ctx.stored(keys[1])
    if ctx.has("get_many"):
        got = await ctx.call("get_many", GetManyRequest(keys=keys))
        assert got.items[0].value == got.items[1].value


@check("kv.transact")
async def an_empty_transaction_is_fine(ctx: Ctx) -> None:
    assert list((await ctx.call("transact", TransactRequest())).results) == []
