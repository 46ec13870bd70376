"""The sql contract beyond the acceptance suite: typed values both ways, prepared statements
cached per connection (counted in the metrics, evicted least recently used), what is refused on
pooled connections, and transactions that roll back whole (prism_plugin_postgres.sql)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from backends import PostgresServer
from conftest import config_for
from prism_plugin_postgres import PostgresPlugin
from prism_plugin_postgres.sql import first_keyword
from prism_plugin_postgres.values import NULL

from prism._proto.prism.data.v1 import (
    Array,
    ExecuteStatementRequest,
    QueryRequest,
    Statement,
    TransactionRequest,
    Value,
)
from prism.sdk import InvalidArgument, ResourceExhausted
from prism.sdk.testing import PluginHarness


def harness(config: dict[str, Any], credentials: dict[str, str]) -> PluginHarness:
    return PluginHarness(PostgresPlugin, config=config, credentials=credentials)


def ints(*values: int) -> Value:
    return Value(array_value=Array(values=[Value(int64_value=v) for v in values]))


async def query(h: PluginHarness, sql: str, *params: Value) -> list[list[Value]]:
    result = await h.execute("query", QueryRequest(sql=sql, params=list(params)))
    return [list(row.values) for row in result.rows]  # type: ignore[union-attr]


async def test_sql_values_round_trip_typed(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    moment = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.UTC)
    params = [
        Value(bool_value=True),
        Value(int64_value=-(2**63)),
        Value(double_value=float("inf")),
        Value(string_value='é "quoted" \\ {braces}'),
        Value(bytes_value=b"\x00\xff\\x"),
        Value(timestamp_value=moment),
        Value(json_value='{"a": [1, null]}'),
        ints(3, 1, 2),
        Value(array_value=Array(values=[ints(1, 2), ints(3, 4)])),
        Value(array_value=Array(values=[Value(string_value='a,"b"'), NULL])),
        NULL,
    ]
    async with harness(config, credentials) as h:
        (row,) = await query(
            h,
            "SELECT $1::bool, $2::int8, $3::float8, $4::text, $5::bytea, $6::timestamptz, "
            "$7::jsonb, $8::int8[], $9::int8[], $10::text[], $11::text",
            *params,
        )
        assert row[:6] == params[:6]
        assert row[6] == Value(json_value='{"a": [1, null]}')
        assert row[7:] == params[7:]
        # Types without a kind of their own come back as the server's text for them.
        (other,) = await query(
            h, "SELECT 1.50::numeric, '2024-01-02'::date, '{1.5}'::numeric[], 'x'::char(3)"
        )
        assert other == [
            Value(string_value="1.50"),
            Value(string_value="2024-01-02"),
            Value(array_value=Array(values=[Value(string_value="1.5")])),
            Value(string_value="x  "),
        ]
        # A timestamp without time zone is UTC.
        (naive,) = await query(h, "SELECT '2024-01-02 03:04:05'::timestamp")
        assert naive[0].timestamp_value == datetime.datetime(
            2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC
        )


async def test_sql_mixed_arrays_are_invalid_argument(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    mixed = Value(array_value=Array(values=[Value(int64_value=1), Value(string_value="a")]))
    async with harness(config, credentials) as h:
        with pytest.raises(InvalidArgument, match=r"parameter \$1: .*one kind"):
            await query(h, "SELECT $1", mixed)


async def test_sql_prepared_statements_are_cached_and_counted(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    async with harness(config, credentials) as h:
        h.metrics()  # a new interval
        for i in range(100):
            await query(h, "SELECT $1::int8 + 1", Value(int64_value=i))
        metrics = h.metrics()
        # Prepared once per pooled connection (2), reused for the other calls.
        assert metrics.cache_misses <= 2
        assert metrics.cache_hits >= 98
        assert metrics.cache_hits + metrics.cache_misses == 100


async def test_sql_prepared_statements_are_evicted_least_recently_used(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, pool_size=1, prepared_statements=3)
    async with harness(config, credentials) as h:
        for i in range(10):
            await query(h, f"SELECT {i}")
        (count,) = await query(h, "SELECT count(*) FROM pg_prepared_statements")
        assert count[0].int64_value <= 3  # this statement included
        assert await query(h, "SELECT 0") == [[Value(int64_value=0)]]


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN",
        "  commit",
        "/* c */ ROLLBACK",
        "-- c\nSAVEPOINT a",
        "SET search_path TO public",
        "RESET ALL",
        "DISCARD ALL",
        "LISTEN x",
        "DEALLOCATE ALL",
        "PREPARE p AS SELECT 1",
        "COPY t FROM STDIN",
    ],
)
async def test_sql_session_state_and_transaction_control_are_refused(
    config: dict[str, Any], credentials: dict[str, str], sql: str
) -> None:
    async with harness(config, credentials) as h:
        with pytest.raises(InvalidArgument, match="is not allowed here"):
            await h.execute("execute", ExecuteStatementRequest(sql=sql))
        with pytest.raises(InvalidArgument, match=r"statement 0: .*is not allowed here"):
            await h.execute("transaction", TransactionRequest(statements=[Statement(sql=sql)]))


def test_first_keyword_skips_comments_and_parentheses() -> None:
    assert first_keyword("/* a */ -- b\n ((select 1))", 1) == ["SELECT"]
    assert first_keyword("set local x = 1", 2) == ["SET", "LOCAL"]
    assert first_keyword("", 1) == []


async def test_sql_set_local_inside_a_transaction_applies_to_it_only(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    async with harness(config, credentials) as h:
        result = await h.execute(
            "transaction",
            TransactionRequest(
                statements=[
                    Statement(sql="SET LOCAL statement_timeout = '12s'"),
                    Statement(sql="SHOW statement_timeout"),
                ]
            ),
        )
        assert result.results[1].rows[0].values[0].string_value == "12s"  # type: ignore[union-attr]
        assert await query(h, "SHOW statement_timeout") == [[Value(string_value="30s")]]


async def test_sql_too_many_rows_fail_and_roll_the_transaction_back(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, max_query_rows=5)
    table = f"t_{config['table']}"
    async with harness(config, credentials) as h:
        with pytest.raises(ResourceExhausted, match="max_query_rows"):
            await query(h, "SELECT generate_series(1, 6)")
        assert len(await query(h, "SELECT generate_series(1, 5)")) == 5
        await h.execute("execute", ExecuteStatementRequest(sql=f"CREATE TABLE {table} (n int)"))
        with pytest.raises(ResourceExhausted, match=r"statement 0: .*max_query_rows"):
            await h.execute(
                "transaction",
                TransactionRequest(
                    statements=[
                        Statement(
                            sql=f"INSERT INTO {table} SELECT generate_series(1, 6) RETURNING n"
                        )
                    ]
                ),
            )
    with postgres.client() as admin:
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)]
