"""Typed helpers for the relational contract (``prism.data.v1``'s sql.proto): statements with
``$1``, ``$2``, ... parameters given as Python values, rows back as Python values.

=====================================  ===================================================
Python                                 ``prism.data.v1.Value``
=====================================  ===================================================
``None``                               ``null_value`` (a cell with no member set, too)
``bool``                               ``bool_value``
``int`` (64-bit signed)                ``int64_value``
``float``                              ``double_value``
``str``                                ``string_value``
``bytes``, ``bytearray``, memoryview   ``bytes_value``
``datetime`` with a time zone          ``timestamp_value`` (rows: UTC ``datetime``)
``Json(x)``, ``dict``                  ``json_value`` (``json.dumps``; rows: ``json.loads``)
``list``, ``tuple``                    ``array_value`` (rows: ``list``)
=====================================  ===================================================

Which types come back typed is the backend's (SQLite returns booleans as integers and
timestamps as text).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import betterproto2

from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import (
    Array,
    Column,
    ExecuteStatementRequest,
    ExecuteStatementResponse,
    QueryRequest,
    QueryResponse,
    Row,
    Statement,
    TransactionRequest,
    TransactionResponse,
    Value,
)

if TYPE_CHECKING:
    from prism.client.client import Client

__all__ = ["Json", "QueryResult", "Sql", "from_value", "to_value"]

_INT64 = range(-(1 << 63), 1 << 63)


@dataclass(frozen=True, slots=True)
class Json:
    """A parameter sent as JSON text (``json_value``): any value ``json.dumps`` takes."""

    value: Any


def to_value(value: object, where: str = "parameter") -> Value:
    """A Python value as a ``prism.data.v1.Value`` (see the module's table). Raises
    ``TypeError`` for a type it has no mapping for and ``ValueError`` for an int outside 64
    bits or a datetime without a time zone."""
    if value is None:
        return Value(null_value=NullValue.NULL_VALUE)
    if isinstance(value, bool):
        return Value(bool_value=value)
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"{where}: {value} does not fit in a 64-bit signed integer")
        return Value(int64_value=value)
    if isinstance(value, float):
        return Value(double_value=value)
    if isinstance(value, str):
        return Value(string_value=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return Value(bytes_value=bytes(value))
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{where}: a datetime needs a time zone (e.g. datetime.UTC)")
        return Value(timestamp_value=value)
    if isinstance(value, Json):
        return Value(json_value=json.dumps(value.value))
    if isinstance(value, dict):
        return Value(json_value=json.dumps(value))
    if isinstance(value, list | tuple):
        items = [to_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return Value(array_value=Array(values=items))
    raise TypeError(f"{where}: no SQL value for {type(value).__name__}")


def from_value(value: Value) -> Any:
    """A ``prism.data.v1.Value`` as a Python value (see the module's table)."""
    kind, item = betterproto2.which_one_of(value, "kind")
    item = cast(Any, item)
    if kind in ("", "null_value"):
        return None
    if kind == "json_value":
        return json.loads(item)
    if kind == "array_value":
        return [from_value(v) for v in item.values]
    if kind == "timestamp_value":
        return item.astimezone(datetime.UTC)
    return item


def _params(params: Sequence[object]) -> list[Value]:
    if isinstance(params, str | bytes):
        raise TypeError("params must be a sequence of values, not a str or bytes")
    return [to_value(p, f"${i}") for i, p in enumerate(params, start=1)]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Rows of a statement: ``columns`` (names), ``rows`` (tuples of Python values, one per
    column), ``rows_affected`` (rows inserted, updated or deleted; 0 for a plain query)."""

    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rows_affected: int = 0

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dicts."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    @classmethod
    def of(
        cls, columns: Iterable[Column], rows: Iterable[Row], rows_affected: int = 0
    ) -> QueryResult:
        return cls(
            tuple(c.name for c in columns),
            [tuple(from_value(v) for v in row.values) for row in rows],
            rows_affected,
        )


#: A statement of a transaction: SQL text alone, or ``(sql, params)``.
StatementLike = str | tuple[str, Sequence[object]]


class Sql:
    """SQL on one namespace: ``db = client.sql("durable")``.

    Errors are statuses (sql.proto): a syntax error, unknown table or column, wrong number of
    parameters → ``InvalidArgument``; a unique-key violation → ``AlreadyExists``; another
    constraint → ``FailedPrecondition``; a serialization failure or deadlock → ``Aborted``
    (retry the transaction). Deadlines as for every call of the client (cancel scopes, and
    :meth:`with_timeout`).
    """

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<prism.client.Sql {self.namespace!r}>"

    def with_timeout(self, timeout: float | None) -> Sql:
        """The same namespace, each call bounded by ``timeout`` seconds (``DeadlineExceeded``)."""
        return Sql(self.client.with_timeout(timeout), self.namespace)

    async def query(self, sql: str, params: Sequence[object] = ()) -> QueryResult:
        """A statement that returns rows (SELECT, INSERT ... RETURNING)."""
        request = QueryRequest(sql=sql, params=_params(params))
        response = await self.client.execute(self.namespace, "query", request, QueryResponse)
        return QueryResult.of(response.columns, response.rows)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """A statement run for its effect; returns the rows it inserted, updated or deleted."""
        request = ExecuteStatementRequest(sql=sql, params=_params(params))
        response = await self.client.execute(
            self.namespace, "execute", request, ExecuteStatementResponse
        )
        rows: int = response.rows_affected
        return rows

    async def transaction(self, statements: Iterable[StatementLike]) -> list[QueryResult]:
        """The statements in order in one transaction: all take effect, or — when one fails,
        raising its status with a message starting ``statement <index>:`` — none does. One
        result per statement."""
        batch = [
            Statement(sql=s) if isinstance(s, str) else Statement(sql=s[0], params=_params(s[1]))
            for s in statements
        ]
        response = await self.client.execute(
            self.namespace,
            "transaction",
            TransactionRequest(statements=batch),
            TransactionResponse,
        )
        return [QueryResult.of(r.columns, r.rows, r.rows_affected) for r in response.results]
