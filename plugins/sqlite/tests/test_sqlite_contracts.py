"""The sqlite plugin's etags, transactions and SQL: what is particular to SQLite (a shared
file, the schema upgrade, the authorizer, SQLite's types). tests/acceptance runs the contracts'
full suites."""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
from pathlib import Path

import pytest
from prism_plugin_sqlite import SqliteConfig, SqlitePlugin

from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import (
    ExecuteStatementRequest,
    ExecuteStatementResponse,
    GetRequest,
    GetResponse,
    QueryRequest,
    QueryResponse,
    SetRequest,
    SetResponse,
    Statement,
    TransactionRequest,
    TransactOperation,
    TransactRequest,
    Value,
)
from prism.sdk import Aborted, AlreadyExists, InvalidArgument, ResourceExhausted
from prism.sdk.testing import PluginHarness


@pytest.fixture
def config(tmp_path: Path) -> SqliteConfig:
    return SqliteConfig(path=str(tmp_path / "kv.db"))


async def test_sqlite_etags_hold_across_two_instances_on_one_file(config: SqliteConfig) -> None:
    async with (
        PluginHarness(SqlitePlugin, config=config) as one,
        PluginHarness(SqlitePlugin, config=config) as two,
    ):
        written = await one.execute("set", SetRequest(key="a", value=b"1"))
        assert isinstance(written, SetResponse)
        got = await two.execute("get", GetRequest(key="a"))
        assert isinstance(got, GetResponse)
        assert got.etag == written.etag
        await two.execute("set", SetRequest(key="a", value=b"2", if_match=got.etag))
        with pytest.raises(Aborted, match="etag mismatch"):
            await one.execute("set", SetRequest(key="a", value=b"3", if_match=written.etag))


async def test_sqlite_transaction_conflict_rolls_back_earlier_writes(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        await h.execute("set", SetRequest(key="taken", value=b"x"))
        request = TransactRequest(
            operations=[
                TransactOperation(set=SetRequest(key="new", value=b"1")),
                TransactOperation(set=SetRequest(key="taken", value=b"2", if_absent=True)),
            ]
        )
        with pytest.raises(Aborted, match=r"operation 1 \(set 'taken'\)"):
            await h.execute("transact", request)
    with contextlib.closing(sqlite3.connect(config.path)) as db:
        rows = db.execute("SELECT key, value FROM prism_kv ORDER BY key").fetchall()
    assert rows == [("taken", b"x")]


async def test_sqlite_a_version_1_database_is_upgraded(config: SqliteConfig) -> None:
    with contextlib.closing(sqlite3.connect(config.path)) as db:
        db.executescript(
            "CREATE TABLE prism_kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, "
            "expires_at INTEGER) WITHOUT ROWID; INSERT INTO prism_kv VALUES ('old', x'01', NULL);"
            "PRAGMA user_version = 1;"
        )
    async with PluginHarness(SqlitePlugin, config=config) as h:
        got = await h.execute("get", GetRequest(key="old"))
        assert isinstance(got, GetResponse)
        assert (got.found, got.value) == (True, b"\x01")
        await h.execute("set", SetRequest(key="old", value=b"2", if_match=got.etag))
    with contextlib.closing(sqlite3.connect(config.path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)


def v(**kind: object) -> Value:
    return Value(**kind)  # type: ignore[arg-type]


async def test_sqlite_sql_binds_every_kind_and_returns_sqlite_types(config: SqliteConfig) -> None:
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    async with PluginHarness(SqlitePlugin, config=config) as h:
        await h.execute(
            "execute",
            ExecuteStatementRequest(sql="CREATE TABLE t (a, b, c, d, e, f, g, h)"),
        )
        params = [
            v(null_value=NullValue.NULL_VALUE),
            v(bool_value=True),
            v(int64_value=-(2**63)),
            v(double_value=0.5),
            v(string_value="é"),
            v(bytes_value=b"\x00"),
            v(timestamp_value=moment),
            v(json_value='{"a": [1]}'),
        ]
        done = await h.execute(
            "execute",
            ExecuteStatementRequest(
                sql="INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", params=params
            ),
        )
        assert done == ExecuteStatementResponse(rows_affected=1)
        result = await h.execute(
            "query", QueryRequest(sql="SELECT * FROM t WHERE c = $1", params=[params[2]])
        )
        assert isinstance(result, QueryResponse)
        assert [c.name for c in result.columns] == list("abcdefgh")
        assert result.rows[0].values == [
            v(null_value=NullValue.NULL_VALUE),
            v(int64_value=1),
            v(int64_value=-(2**63)),
            v(double_value=0.5),
            v(string_value="é"),
            v(bytes_value=b"\x00"),
            v(string_value="2024-01-02T03:04:05.678901Z"),
            v(string_value='{"a": [1]}'),
        ]
        with pytest.raises(InvalidArgument, match="no array type"):
            await h.execute("query", QueryRequest(sql="SELECT $1", params=[v(array_value={})]))


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE '/tmp/elsewhere.db' AS other",
        "PRAGMA journal_mode = DELETE",
        "BEGIN",
        "DELETE FROM prism_kv",
        "DROP TABLE prism_kv",
        "UPDATE prism_kv SET version = 0",
        "CREATE TRIGGER x AFTER INSERT ON prism_kv BEGIN SELECT 1; END",
    ],
)
async def test_sqlite_sql_refuses_what_escapes_or_breaks_the_plugin(
    config: SqliteConfig, sql: str
) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        with pytest.raises(InvalidArgument, match="not allowed"):
            await h.execute("execute", ExecuteStatementRequest(sql=sql))
        readable = await h.execute("query", QueryRequest(sql="SELECT key FROM prism_kv"))
        assert isinstance(readable, QueryResponse)
        assert len(readable.rows) == 1
        await h.execute("set", SetRequest(key="b", value=b"1"))  # still in autocommit mode


async def test_sqlite_sql_statement_errors_map_to_statuses(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        await h.execute(
            "execute", ExecuteStatementRequest(sql="CREATE TABLE u (id INTEGER PRIMARY KEY)")
        )
        statements = [
            Statement(sql="INSERT INTO u VALUES ($1)", params=[v(int64_value=1)]),
            Statement(sql="INSERT INTO u VALUES ($1)", params=[v(int64_value=1)]),
        ]
        with pytest.raises(AlreadyExists, match="statement 1: UNIQUE"):
            await h.execute("transaction", TransactionRequest(statements=statements))
        with pytest.raises(InvalidArgument, match="syntax error"):
            await h.execute("query", QueryRequest(sql="SELEC 1"))
        with pytest.raises(InvalidArgument, match="no such table"):
            await h.execute("query", QueryRequest(sql="SELECT * FROM missing"))
        with pytest.raises(InvalidArgument, match="one statement at a time"):
            await h.execute("query", QueryRequest(sql="SELECT 1; SELECT 2"))
        count = await h.execute("query", QueryRequest(sql="SELECT count(*) FROM u"))
        assert isinstance(count, QueryResponse)
        assert count.rows[0].values == [v(int64_value=0)]


async def test_sqlite_sql_caps_the_rows_a_query_returns(config: SqliteConfig) -> None:
    config.max_query_rows = 3
    async with PluginHarness(SqlitePlugin, config=config) as h:
        recursive = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"
        )
        with pytest.raises(ResourceExhausted, match="more than 3 rows"):
            await h.execute("query", QueryRequest(sql=recursive))
        ok = await h.execute("query", QueryRequest(sql=recursive + " LIMIT 3"))
        assert isinstance(ok, QueryResponse)
        assert len(ok.rows) == 3
