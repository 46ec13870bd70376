"""The sql contract on a real ClickHouse 18.16 beyond the acceptance suite: ClickHouse's types
come back typed (values.py), parameters of every kind are bound as data and survive whatever
bytes they hold, a batch is one INSERT (the server's query log says so), limits, a server that
goes away, and credentials that never reach a URL or a log."""

from __future__ import annotations

import datetime
import logging
import math

import pytest
import trio
from backends import ClickHouseServer
from clickhouse_testkit import config_for, harness, query, table
from prism_plugin_clickhouse import ClickHousePlugin
from prism_plugin_clickhouse.values import NULL

from prism._proto.prism.data.v1 import (
    Array,
    ExecuteStatementRequest,
    QueryRequest,
    Row,
    TransactionRequest,
    Value,
)
from prism.sdk import InvalidArgument, ResourceExhausted, Unavailable, Unimplemented
from prism.sdk.errors import GrpcError, Status
from prism.sdk.testing import PluginHarness


def v(**kind: object) -> Value:
    return Value(**kind)  # type: ignore[arg-type]


def arr(*values: Value) -> Value:
    return Value(array_value=Array(values=list(values)))


async def test_clickhouse_types_come_back_typed(clickhouse: ClickHouseServer) -> None:
    async with harness(clickhouse) as h:
        result = await h.execute(
            "query",
            QueryRequest(
                sql="SELECT toUInt64(18446744073709551615) AS big, toInt8(-1) AS small, "
                "toFloat32(1.5) AS f, nan AS n, -inf AS i, toDate('2020-01-02') AS d, "
                "toDateTime('2020-01-02 03:04:05', 'UTC') AS dt, toDecimal32(1.5, 2) AS dec, "
                "[1, 2] AS a, ['a\\tb', 'c''d', 'e\\xff'] AS s, ('x', 3) AS tup, NULL AS nul, "
                "toNullable('q') AS q, 'a\\xffb' AS bin, [NULL, 1] AS na, [[1], []] AS nested"
            ),
        )
    assert [c.type for c in result.columns][:3] == ["UInt64", "Int8", "Float32"]  # type: ignore[union-attr]
    (row,) = result.rows  # type: ignore[union-attr]
    values = list(row.values)
    assert values[0] == v(string_value="18446744073709551615")  # over int64: exact text
    assert values[1:3] == [v(int64_value=-1), v(double_value=1.5)]
    assert math.isnan(values[3].double_value)
    assert values[4] == v(double_value=-math.inf)
    assert values[5] == v(string_value="2020-01-02")
    assert values[6] == v(
        timestamp_value=datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    )
    assert values[7] == v(string_value="1.50")
    assert values[8] == arr(v(int64_value=1), v(int64_value=2))
    assert values[9] == arr(v(string_value="a\tb"), v(string_value="c'd"), v(bytes_value=b"e\xff"))
    assert values[10] == arr(v(string_value="x"), v(int64_value=3))
    assert values[11:13] == [NULL, v(string_value="q")]
    assert values[13] == v(bytes_value=b"a\xffb")
    assert values[14] == arr(NULL, v(int64_value=1))
    assert values[15] == arr(arr(v(int64_value=1)), arr())


async def test_clickhouse_parameters_of_every_kind_are_bound(clickhouse: ClickHouseServer) -> None:
    moment = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.UTC)
    hostile = "a\tb\nc\\d'e\0f -- $2 ' OR 1=1"
    async with harness(clickhouse) as h:
        got = await query(
            h,
            "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9",
            v(bool_value=True),
            v(int64_value=-(2**63)),
            v(double_value=0.1),
            v(string_value=hostile),
            v(bytes_value=b"\x00\xff\t\n\\"),
            v(json_value='{"a": [1]}'),
            v(timestamp_value=moment),
            arr(v(string_value="x'y"), v(string_value="\t")),
            arr(arr(v(int64_value=1)), arr()),
        )
    assert got == [
        [
            v(int64_value=1),  # ClickHouse 18 has no Bool: UInt8
            v(int64_value=-(2**63)),
            v(double_value=0.1),
            v(string_value=hostile),
            v(bytes_value=b"\x00\xff\t\n\\"),
            v(string_value='{"a": [1]}'),
            v(timestamp_value=moment),
            arr(v(string_value="x'y"), v(string_value="\t")),
            arr(arr(v(int64_value=1)), arr()),
        ]
    ]


async def test_clickhouse_parameters_refused_clearly(clickhouse: ClickHouseServer) -> None:
    async with harness(clickhouse) as h:
        fraction = datetime.datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=datetime.UTC)
        with pytest.raises(InvalidArgument, match="whole seconds"):
            await query(h, "SELECT $1", v(timestamp_value=fraction))
        with pytest.raises(InvalidArgument, match="different types"):
            await query(h, "SELECT $1", arr(v(int64_value=1), v(string_value="x")))
        with pytest.raises(InvalidArgument, match="2 parameters"):
            await query(h, "SELECT $1, $2", v(int64_value=1))
        with pytest.raises(InvalidArgument, match="no parameters"):
            await query(h, "SELECT 1", v(int64_value=1))
        # The plugin is still fine after each refusal.
        assert await query(h, "SELECT '$1' AS literal") == [[v(string_value="$1")]]


async def test_clickhouse_batch_is_one_insert(clickhouse: ClickHouseServer) -> None:
    name = table()
    clickhouse.query(f"CREATE TABLE {name} (id Int64, s String) ENGINE = Memory")
    config = config_for(clickhouse)
    batch = [Row(values=[v(int64_value=i), v(string_value=f"{i}\t'\n")]) for i in range(5000)]
    async with PluginHarness(
        ClickHousePlugin, config=config, credentials=clickhouse.credentials.as_map()
    ) as h:
        done = await h.execute(
            "execute",
            ExecuteStatementRequest(sql=f"INSERT INTO {name} (id, s) VALUES ($1, $2)", batch=batch),
        )
        assert done.rows_affected == 5000  # type: ignore[union-attr]
        with pytest.raises(InvalidArgument, match=r"INSERT \.\.\. VALUES"):
            await h.execute(
                "execute",
                ExecuteStatementRequest(sql=f"SELECT $1 FROM {name}", batch=batch[:2]),
            )
        with pytest.raises(InvalidArgument, match=r"INSERT \.\.\. VALUES"):
            await h.execute(  # no parameters: the rows could only repeat the statement
                "execute",
                ExecuteStatementRequest(
                    sql=f"INSERT INTO {name} VALUES (1, 'x')", batch=[Row(), Row()]
                ),
            )
    assert clickhouse.rows(f"SELECT count(), sum(id), any(s) LIKE '%\\t''\\n' FROM {name}") == [
        (5000, sum(range(5000)), 1)
    ]
    inserts = await trio.to_thread.run_sync(clickhouse.connections, config["client_name"])
    logged = clickhouse.rows(
        "SELECT count() FROM system.query_log WHERE type = 1 AND "
        f"http_user_agent = '{config['client_name']}' AND query LIKE 'INSERT INTO {name}%'"
    )
    assert inserts  # the log has caught up with this client's requests
    assert logged == [(1,)]


async def test_clickhouse_limits_are_enforced(clickhouse: ClickHouseServer) -> None:
    async with harness(clickhouse, max_query_rows=10, max_batch_rows=3) as h:
        assert len(await query(h, "SELECT number FROM system.numbers LIMIT 10")) == 10
        with pytest.raises(ResourceExhausted):
            await query(h, "SELECT number FROM system.numbers LIMIT 11")
        rows = [Row(values=[v(int64_value=i)]) for i in range(4)]
        with pytest.raises(InvalidArgument, match="over the limit of 3"):
            await h.execute(
                "execute", ExecuteStatementRequest(sql="INSERT INTO x VALUES ($1)", batch=rows)
            )
        with pytest.raises(InvalidArgument, match="max_statement_bytes"):
            await query(h, "SELECT '" + "x" * 20_000 + "'")


async def test_clickhouse_transaction_is_refused(clickhouse: ClickHouseServer) -> None:
    async with harness(clickhouse) as h:
        with pytest.raises(Unimplemented):
            await h.execute("transaction", TransactionRequest())
    assert "transaction" not in ClickHousePlugin.supported_operations
    assert "execute:batch" in ClickHousePlugin.supported_operations


async def test_clickhouse_server_gone_is_unavailable(own_clickhouse: ClickHouseServer) -> None:
    async with harness(own_clickhouse) as h:
        assert await query(h, "SELECT 1") == [[v(int64_value=1)]]
        own_clickhouse.stop()
        with pytest.raises(Unavailable, match="unreachable"):
            await query(h, "SELECT 1")


async def test_clickhouse_credentials_never_logged(
    clickhouse: ClickHouseServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = clickhouse.credentials.password
    caplog.set_level(logging.DEBUG)
    async with harness(clickhouse) as h:
        await query(h, "SELECT $1", v(string_value="x"))
        with pytest.raises(InvalidArgument) as caught:
            await query(h, "SELEC nothing")
    assert password not in caught.value.message
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records)  # httpx logged requests
    assert all(password not in r.getMessage() for r in caplog.records)
    wrong = {"username": "prism", "password": "not-" + password}
    with pytest.raises(GrpcError) as refused:
        async with PluginHarness(
            ClickHousePlugin, config=config_for(clickhouse), credentials=wrong
        ):
            pass
    assert refused.value.status == Status.UNAUTHENTICATED
    assert wrong["password"] not in refused.value.message


async def test_clickhouse_config_is_checked() -> None:
    with pytest.raises(GrpcError, match="host") as caught:
        async with PluginHarness(
            ClickHousePlugin, config={}, credentials={"username": "u", "password": "p"}
        ):
            pass
    assert caught.value.status == Status.INVALID_ARGUMENT
    with pytest.raises(GrpcError, match="not a URL"):
        async with PluginHarness(
            ClickHousePlugin,
            config={"host": "http://x/"},
            credentials={"username": "u", "password": "p"},
        ):
            pass
