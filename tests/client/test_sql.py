"""``prism.client.Sql`` against SQLite through a real proxy, and the Python ↔ ``Value``
mapping it uses."""

from __future__ import annotations

import datetime
import math

import pytest

import prism.client as pc
from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import Array, Value
from prism.client.sql import from_value, to_value

WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)


async def test_sql_execute_query_with_typed_params(client: pc.Client) -> None:
    db = client.sql("db")
    created = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB, "
    assert await db.execute(created + "flag BOOLEAN, at TIMESTAMP, doc JSON, note TEXT)") == 0
    inserted = await db.execute(
        "INSERT INTO items (name, price, data, flag, at, doc, note) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ["widget", 2.5, b"\x00\xff", True, WHEN, pc.Json({"size": [1, 2]}), None],
    )
    assert inserted == 1
    result = await db.query("SELECT * FROM items WHERE name = $1", ["widget"])
    assert result.columns == ("id", "name", "price", "data", "flag", "at", "doc", "note")
    # SQLite's own representation: booleans as integers, timestamps and JSON as text.
    assert result.rows == [
        (1, "widget", 2.5, b"\x00\xff", 1, "2024-01-02T03:04:05.678901Z", '{"size": [1, 2]}', None)
    ]
    assert result.dicts()[0]["name"] == "widget"
    assert result.rows_affected == 0
    assert (await db.query("SELECT * FROM items WHERE name = $1", ["nothing"])).rows == []


async def test_sql_rows_affected(client: pc.Client) -> None:
    db = client.sql("db")
    await db.execute("CREATE TABLE t (n INTEGER)")
    for n in range(5):
        await db.execute("INSERT INTO t VALUES ($1)", [n])
    assert await db.execute("UPDATE t SET n = n + 10 WHERE n < $1", [3]) == 3
    assert await db.execute("DELETE FROM t") == 5


async def test_sql_transaction_all_or_nothing(client: pc.Client) -> None:
    db = client.sql("db")
    await db.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
    results = await db.transaction(
        [
            ("INSERT INTO accounts VALUES ($1, $2)", ["ada", 10]),
            ("INSERT INTO accounts VALUES ($1, $2)", ["bob", 0]),
            "SELECT name, balance FROM accounts ORDER BY name",
        ]
    )
    assert [r.rows_affected for r in results[:2]] == [1, 1]
    assert results[2].rows == [("ada", 10), ("bob", 0)]

    with pytest.raises(pc.AlreadyExists) as info:
        await db.transaction(
            [
                ("UPDATE accounts SET balance = balance - 5 WHERE name = $1", ["ada"]),
                ("INSERT INTO accounts VALUES ($1, $2)", ["bob", 5]),
            ]
        )
    assert info.value.message.startswith("statement 1: UNIQUE constraint failed")
    unchanged = await db.query("SELECT balance FROM accounts WHERE name = 'ada'")
    assert unchanged.rows == [(10,)]


async def test_sql_errors_carry_their_status(client: pc.Client) -> None:
    db = client.sql("db")
    await db.execute("CREATE TABLE u (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    await db.execute("INSERT INTO u VALUES ($1, $2)", ["a", "1"])
    with pytest.raises(pc.InvalidArgument):
        await db.query("SELEC nonsense")
    with pytest.raises(pc.InvalidArgument):
        await db.query("SELECT * FROM nowhere")
    with pytest.raises(pc.AlreadyExists):
        await db.execute("INSERT INTO u VALUES ($1, $2)", ["a", "2"])
    with pytest.raises(pc.FailedPrecondition):
        await db.execute("INSERT INTO u VALUES ($1, $2)", ["b", None])
    with pytest.raises(pc.Unimplemented):
        await client.sql("kv").query("SELECT 1")  # memstore has no SQL


async def test_sql_parameters_that_have_no_value_fail_before_sending(client: pc.Client) -> None:
    db = client.sql("db")
    with pytest.raises(ValueError, match=r"\$1: a datetime needs a time zone"):
        await db.query("SELECT $1", [datetime.datetime(2024, 1, 1)])
    with pytest.raises(ValueError, match=r"\$2: .* 64-bit"):
        await db.query("SELECT $1, $2", [1, 1 << 63])
    with pytest.raises(TypeError, match=r"\$1: no SQL value for set"):
        await db.query("SELECT $1", [{1, 2}])
    with pytest.raises(TypeError, match="not a str"):
        await db.query("SELECT $1", "abc")


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -(1 << 63), (1 << 63) - 1, 1.5, "täxt", b"\x00", WHEN, [1, "a", None]],
)
def test_sql_values_round_trip(value: object) -> None:
    assert from_value(Value.parse(bytes(to_value(value)))) == value


def test_sql_value_kinds() -> None:
    assert to_value(None) == Value(null_value=NullValue.NULL_VALUE)
    assert from_value(Value()) is None  # no member set is NULL too
    assert to_value(True) == Value(bool_value=True)  # a bool, not an int
    assert to_value((1, 2)) == Value(array_value=Array(values=[to_value(1), to_value(2)]))
    assert to_value({"a": [1]}) == Value(json_value='{"a": [1]}')
    assert to_value(pc.Json([1, "x"])) == Value(json_value='[1, "x"]')
    assert from_value(Value(json_value='{"a": [1, null]}')) == {"a": [1, None]}
    eastern = WHEN.astimezone(datetime.timezone(datetime.timedelta(hours=-5)))
    assert from_value(to_value(eastern)) == WHEN
    assert from_value(to_value(eastern)).tzinfo == datetime.UTC
    assert math.isnan(from_value(to_value(float("nan"))))
