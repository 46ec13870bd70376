"""sql: parameterized query/execute with typed values ($1, $2, ... in every backend), batched
executes, and (sql.transaction) transactions over a list of statements, checked in the database
with its own client. Checks that need something of the backend's own SQL (unique keys, UPDATE
and DELETE reporting their rows) say so with ``dialect=``: ClickHouse has neither."""

from __future__ import annotations

import datetime
import json

import trio
from kit import Ctx, check, expect_status

from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import (
    Array,
    ExecuteStatementRequest,
    QueryRequest,
    Row,
    Statement,
    TransactionRequest,
    Value,
)
from prism.grpc.wire.status import Status


def v(**kind: object) -> Value:
    return Value(**kind)  # type: ignore[arg-type]


NULL = Value(null_value=NullValue.NULL_VALUE)


async def create(ctx: Ctx, columns: str) -> None:
    sql = f"CREATE TABLE {ctx.table} ({columns}){ctx.dialect.table_options}"
    await ctx.call("execute", ExecuteStatementRequest(sql=sql))


async def people(ctx: Ctx) -> None:
    d = ctx.dialect
    await create(ctx, f"id {d.integer} {d.primary_key}, name {d.text}")


@check("sql")
async def typed_values_round_trip(ctx: Ctx) -> None:
    d = ctx.dialect
    await create(ctx, f"id {d.integer}, r {d.real}, s {d.text}, b {d.blob}, n {d.text}")
    params = [
        v(int64_value=-(2**62)),
        v(double_value=2.5),
        v(string_value="héllo 'quoted'"),
        v(bytes_value=b"\x00\xff"),
        NULL,
    ]
    done = await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"INSERT INTO {ctx.table} VALUES ($1, $2, $3, $4, $5)", params=params
        ),
    )
    assert done.rows_affected == 1
    result = await ctx.call(
        "query",
        QueryRequest(
            sql=f"SELECT id, r, s, b, n FROM {ctx.table} WHERE id = $1", params=[params[0]]
        ),
    )
    assert [c.name for c in result.columns] == ["id", "r", "s", "b", "n"]
    assert [list(row.values) for row in result.rows] == [params]
    assert await ctx.sql_rows(f"SELECT id, s FROM {ctx.table}") == [(-(2**62), "héllo 'quoted'")]


@check("sql")
async def parameters_are_bound_never_interpolated(ctx: Ctx) -> None:
    await people(ctx)
    hostile = f"x'); DROP TABLE {ctx.table}; --"
    await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)",
            params=[v(int64_value=1), v(string_value=hostile)],
        ),
    )
    assert await ctx.sql_rows(f"SELECT name FROM {ctx.table}") == [(hostile,)]


@check("sql", dialect=("row_updates",))
async def rows_affected_counts_changed_rows(ctx: Ctx) -> None:
    await people(ctx)
    for i in range(5):
        await ctx.call(
            "execute",
            ExecuteStatementRequest(
                sql=f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)",
                params=[v(int64_value=i), v(string_value=f"p{i}")],
            ),
        )
    updated = await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"UPDATE {ctx.table} SET name = $1 WHERE id < $2",
            params=[v(string_value="low"), v(int64_value=3)],
        ),
    )
    assert updated.rows_affected == 3
    deleted = await ctx.call(
        "execute", ExecuteStatementRequest(sql=f"DELETE FROM {ctx.table} WHERE name = 'low'")
    )
    assert deleted.rows_affected == 3
    assert await ctx.sql_rows(f"SELECT count(*) FROM {ctx.table}") == [(2,)]


@check("sql.transaction")
async def a_transaction_applies_every_statement(ctx: Ctx) -> None:
    await people(ctx)
    insert = f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)"
    result = await ctx.call(
        "transaction",
        TransactionRequest(
            statements=[
                Statement(sql=insert, params=[v(int64_value=1), v(string_value="a")]),
                Statement(sql=insert, params=[v(int64_value=2), v(string_value="b")]),
                Statement(sql=f"SELECT name FROM {ctx.table} ORDER BY id"),
            ]
        ),
    )
    assert [r.rows_affected for r in result.results[:2]] == [1, 1]
    assert [list(row.values) for row in result.results[2].rows] == [
        [v(string_value="a")],
        [v(string_value="b")],
    ]
    assert await ctx.sql_rows(f"SELECT id FROM {ctx.table} ORDER BY id") == [(1,), (2,)]


@check("sql.transaction")
async def a_failing_statement_rolls_back_the_whole_transaction(ctx: Ctx) -> None:
    await people(ctx)
    insert = f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)"
    with expect_status(Status.ALREADY_EXISTS, "statement 2"):
        await ctx.call(
            "transaction",
            TransactionRequest(
                statements=[
                    Statement(sql=insert, params=[v(int64_value=1), v(string_value="a")]),
                    Statement(sql=insert, params=[v(int64_value=2), v(string_value="b")]),
                    Statement(sql=insert, params=[v(int64_value=1), v(string_value="dup")]),
                ]
            ),
        )
    assert await ctx.sql_rows(f"SELECT count(*) FROM {ctx.table}") == [(0,)]


@check("sql")
async def statement_errors_map_to_statuses(ctx: Ctx) -> None:
    await people(ctx)
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call("query", QueryRequest(sql="SELEC nothing"))
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call("query", QueryRequest(sql=f"SELECT * FROM {ctx.table}_missing"))
    with expect_status(Status.INVALID_ARGUMENT):
        await ctx.call(  # fewer parameters than the statement has
            "query",
            QueryRequest(
                sql=f"SELECT name FROM {ctx.table} WHERE id = $1 AND name = $2",
                params=[v(int64_value=1)],
            ),
        )


@check("sql", dialect=("unique_keys",))
async def a_duplicate_key_is_already_exists(ctx: Ctx) -> None:
    await people(ctx)
    insert = f"INSERT INTO {ctx.table} (id, name) VALUES ($1, 'x')"
    await ctx.call("execute", ExecuteStatementRequest(sql=insert, params=[v(int64_value=1)]))
    with expect_status(Status.ALREADY_EXISTS):
        await ctx.call("execute", ExecuteStatementRequest(sql=insert, params=[v(int64_value=1)]))


@check("sql")
async def concurrent_statements_all_land(ctx: Ctx) -> None:
    await people(ctx)

    async def insert(i: int) -> None:
        await ctx.call(
            "execute",
            ExecuteStatementRequest(
                sql=f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)",
                params=[v(int64_value=i), v(string_value=str(i))],
            ),
        )

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(insert, i)
    assert await ctx.sql_rows(f"SELECT count(*) FROM {ctx.table}") == [(16,)]


@check("sql", needs=("execute:batch",))
async def a_batch_inserts_every_row_in_one_call(ctx: Ctx) -> None:
    await people(ctx)
    insert = f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)"
    batch = [Row(values=[v(int64_value=i), v(string_value=f"n'{i}\t")]) for i in range(250)]
    done = await ctx.call("execute", ExecuteStatementRequest(sql=insert, batch=batch))
    assert done.rows_affected == 250
    assert await ctx.sql_rows(f"SELECT count(*), sum(id) FROM {ctx.table}") == [
        (250, sum(range(250)))
    ]
    assert await ctx.sql_rows(f"SELECT name FROM {ctx.table} WHERE id = 7") == [("n'7\t",)]


@check("sql", needs=("execute:batch",))
async def a_batch_with_a_bad_row_writes_nothing(ctx: Ctx) -> None:
    await people(ctx)
    insert = f"INSERT INTO {ctx.table} (id, name) VALUES ($1, $2)"
    batch = [Row(values=[v(int64_value=1), v(string_value="a")]), Row(values=[v(int64_value=2)])]
    with expect_status(Status.INVALID_ARGUMENT, "batch[1]"):
        await ctx.call("execute", ExecuteStatementRequest(sql=insert, batch=batch))
    assert await ctx.sql_rows(f"SELECT count(*) FROM {ctx.table}") == [(0,)]


# -- typed-row features: only for plugins that declare them -----------------------------------


@check("sql", needs=("query:bool",))
async def booleans_come_back_typed(ctx: Ctx) -> None:
    await create(ctx, f"b {ctx.dialect.boolean}")
    await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"INSERT INTO {ctx.table} VALUES ($1), ($2)",
            params=[v(bool_value=True), v(bool_value=False)],
        ),
    )
    rows = (await ctx.call("query", QueryRequest(sql=f"SELECT b FROM {ctx.table}"))).rows
    assert sorted(row.values[0].bool_value for row in rows) == [False, True]


@check("sql", needs=("query:timestamp",))
async def timestamps_come_back_typed(ctx: Ctx) -> None:
    moment = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.UTC)
    await create(ctx, f"t {ctx.dialect.timestamp}")
    await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"INSERT INTO {ctx.table} VALUES ($1)", params=[v(timestamp_value=moment)]
        ),
    )
    row = (await ctx.call("query", QueryRequest(sql=f"SELECT t FROM {ctx.table}"))).rows[0]
    assert row.values[0].timestamp_value == moment


@check("sql", needs=("query:json",))
async def json_comes_back_typed(ctx: Ctx) -> None:
    document = {"a": [1, 2, {"b": None}], "é": "x"}
    await create(ctx, f"j {ctx.dialect.json}")
    await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"INSERT INTO {ctx.table} VALUES ($1)",
            params=[v(json_value=json.dumps(document))],
        ),
    )
    row = (await ctx.call("query", QueryRequest(sql=f"SELECT j FROM {ctx.table}"))).rows[0]
    assert json.loads(row.values[0].json_value) == document


@check("sql", needs=("query:array",))
async def arrays_come_back_typed(ctx: Ctx) -> None:
    values = [v(int64_value=i) for i in (3, 1, 2)]
    await create(ctx, f"a {ctx.dialect.int_array}")
    await ctx.call(
        "execute",
        ExecuteStatementRequest(
            sql=f"INSERT INTO {ctx.table} VALUES ($1)",
            params=[v(array_value=Array(values=values))],
        ),
    )
    row = (await ctx.call("query", QueryRequest(sql=f"SELECT a FROM {ctx.table}"))).rows[0]
    assert list(row.values[0].array_value.values) == values
