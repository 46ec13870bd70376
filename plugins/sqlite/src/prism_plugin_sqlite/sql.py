"""The ``sql`` contract on SQLite: statements with ``$1``-style parameters, typed values, and
transactions over a list of statements. Blocking, like ``db.py``: the plugin runs it in its
worker thread.

Values: SQLite stores NULL, INTEGER, REAL, TEXT and BLOB, and rows come back as those
(``null_value``, ``int64_value``, ``double_value``, ``string_value``, ``bytes_value``).
Parameters of the other kinds are bound as SQLite keeps them: a bool as 0/1, a timestamp as
ISO-8601 UTC text (``2024-01-02T03:04:05.678901Z``, which SQLite's date functions read), JSON as
its text. SQLite has no arrays: an array parameter is ``INVALID_ARGUMENT``.

User statements run under an authorizer that refuses what would escape the namespace or break
the plugin: ATTACH/DETACH (other files), PRAGMA, transaction control (use the ``transaction``
operation), and changes to the plugin's own table ``prism_kv`` (reading it is allowed).
"""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
from collections.abc import Iterator, Sequence

import betterproto2

from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import Column, Row, Statement, StatementResult, Value
from prism.sdk import (
    AlreadyExists,
    FailedPrecondition,
    GrpcError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

__all__ = ["SqlRunner"]

KV_TABLE = "prism_kv"
_REFUSED = (
    "statement not allowed here: ATTACH/DETACH, PRAGMA, transaction control (use the "
    "'transaction' operation) and changes to the plugin's table prism_kv are refused"
)
_WRITES = {
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_DROP_TRIGGER,
}
_ALWAYS_REFUSED = {
    sqlite3.SQLITE_ATTACH,
    sqlite3.SQLITE_DETACH,
    sqlite3.SQLITE_PRAGMA,
    sqlite3.SQLITE_TRANSACTION,
    sqlite3.SQLITE_SAVEPOINT,
}


def _authorize(
    action: int, arg1: str | None, arg2: str | None, database: str | None, trigger: str | None
) -> int:
    if action in _ALWAYS_REFUSED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_ALTER_TABLE and arg2 == KV_TABLE:
        return sqlite3.SQLITE_DENY
    # For index and trigger actions arg2 is the table; for the others, arg1.
    table = arg2 if action in (sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_DROP_INDEX) else arg1
    if action in (sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_DROP_TRIGGER):
        table = arg2
    if action in _WRITES and table == KV_TABLE:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _timestamp(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    text = value.astimezone(datetime.UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def _bind(value: Value, index: int) -> object:
    kind, item = betterproto2.which_one_of(value, "kind")
    if kind in ("", "null_value"):
        return None
    if kind == "bool_value":
        return int(bool(item))
    if kind == "timestamp_value":
        assert isinstance(item, datetime.datetime)
        return _timestamp(item)
    if kind == "array_value":
        raise InvalidArgument(f"parameter ${index}: SQLite has no array type")
    return item  # int64, double, string, bytes, json text


def _cell(value: object) -> Value:
    if value is None:
        return Value(null_value=NullValue.NULL_VALUE)
    if isinstance(value, int):
        return Value(int64_value=value)
    if isinstance(value, float):
        return Value(double_value=value)
    if isinstance(value, str):
        return Value(string_value=value)
    if isinstance(value, bytes | memoryview):
        return Value(bytes_value=bytes(value))
    raise TypeError(f"unexpected SQLite value of type {type(value).__name__}")


def _status(exc: sqlite3.Error) -> GrpcError:
    """A statement's error as its status (see prism.data.v1 sql.proto). SQLite's messages name
    tables, columns and syntax, never values, so they are passed on."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        if "UNIQUE" in text or "PRIMARY KEY" in text:
            return AlreadyExists(text)
        return FailedPrecondition(text)
    if "not authorized" in text:
        return InvalidArgument(_REFUSED)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return Unavailable("the SQLite database is locked by another connection")
    return InvalidArgument(text)


class SqlRunner:
    def __init__(self, connection: sqlite3.Connection, max_rows: int) -> None:
        self._db = connection
        self.max_rows = max_rows

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        self._db.set_authorizer(_authorize)
        try:
            yield
        finally:
            self._db.set_authorizer(None)

    def _statement(self, sql: str, params: Sequence[Value]) -> StatementResult:
        if not sql.strip():
            raise InvalidArgument("sql must not be empty")
        bound = {str(i): _bind(value, i) for i, value in enumerate(params, start=1)}
        with self._guarded():
            cursor = self._db.execute(sql, bound)
        try:
            if cursor.description is None:
                return StatementResult(rows_affected=max(cursor.rowcount, 0))
            columns = [Column(name=d[0]) for d in cursor.description]
            fetched = cursor.fetchmany(self.max_rows + 1)
            if len(fetched) > self.max_rows:
                raise ResourceExhausted(
                    f"the statement returned more than {self.max_rows} rows (max_query_rows): "
                    "add a LIMIT, or page with a WHERE on the key"
                )
            rows = [Row(values=[_cell(v) for v in row]) for row in fetched]
            return StatementResult(
                rows_affected=max(cursor.rowcount, 0), columns=columns, rows=rows
            )
        finally:
            cursor.close()

    def run(self, sql: str, params: Sequence[Value]) -> StatementResult:
        """One statement in autocommit mode."""
        try:
            return self._statement(sql, params)
        except sqlite3.Error as exc:
            raise _status(exc) from None

    def transaction(self, statements: Sequence[Statement]) -> list[StatementResult]:
        """Every statement in one transaction, or none of them."""
        results: list[StatementResult] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _status(exc) from None
        try:
            for index, statement in enumerate(statements):
                try:
                    results.append(self._statement(statement.sql, statement.params))
                except sqlite3.Error as exc:
                    error = _status(exc)
                    raise GrpcError.for_status(
                        error.status, f"statement {index}: {error.message}"
                    ) from None
                except GrpcError as error:
                    raise GrpcError.for_status(
                        error.status, f"statement {index}: {error.message}"
                    ) from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return results
