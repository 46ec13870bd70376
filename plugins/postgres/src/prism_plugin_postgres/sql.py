"""The ``sql`` contract on PostgreSQL: parameterized ``query``/``execute`` and ``transaction``.

Statements are PostgreSQL's own, with ``$1, $2, ...`` parameters bound by the server (never
interpolated), prepared once per pooled connection and reused (values.py says how values are
typed both ways). ``query``/``execute`` are one statement in one round trip, committed on its
own; ``transaction`` sends ``BEGIN`` and every statement in one batch, then ``COMMIT`` — or
``ROLLBACK`` when a statement failed or returned more than ``max_query_rows`` rows — so nothing
of a failed transaction is applied. A failing statement's error names it: ``statement <i>: ``.

Statements run on pooled connections, so what would outlive the call on its connection is
refused with INVALID_ARGUMENT before it is sent: transaction control (use ``transaction``),
session settings (``SET`` outside a transaction, ``RESET``, ``DISCARD``), session prepared
statements (``PREPARE``/``EXECUTE``/``DEALLOCATE``), ``LISTEN``/``UNLISTEN`` (use
``subscribe``) and ``COPY``. ``SET LOCAL`` and ``SET TRANSACTION`` inside a ``transaction``
are fine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from psycopg import pq

from prism._proto.prism.data.v1 import (
    Column,
    Row,
    StatementResult,
    Value,
)
from prism._proto.prism.data.v1 import (
    Statement as DataStatement,
)
from prism.sdk import GrpcError, InvalidArgument, ResourceExhausted
from prism_plugin_postgres.connection import Statement
from prism_plugin_postgres.errors import statement_error
from prism_plugin_postgres.pool import Lease, Pool
from prism_plugin_postgres.values import NULL, decoder_for, encode_params

__all__ = ["SqlRunner", "first_keyword"]

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_REFUSED = frozenset(
    {
        "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE",
        "PREPARE", "EXECUTE", "DEALLOCATE", "DISCARD", "RESET", "LISTEN", "UNLISTEN", "COPY",
    }
)  # fmt: skip
_COMMENT_OR_SPACE = re.compile(r"(\s+|--[^\n]*(\n|\Z)|/\*.*?\*/)", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_]+")


def first_keyword(sql: str, count: int = 1) -> list[str]:
    """The statement's first ``count`` words, upper-cased, past whitespace and comments."""
    words: list[str] = []
    position = 0
    while len(words) < count:
        while True:
            skipped = _COMMENT_OR_SPACE.match(sql, position)
            if not skipped:
                break
            position = skipped.end()
        while position < len(sql) and sql[position] == "(":
            position += 1
        word = _WORD.match(sql, position)
        if not word:
            break
        words.append(word.group().upper())
        position = word.end()
    return words


def _check(sql: str, in_transaction: bool) -> None:
    if not sql.strip():
        raise InvalidArgument("sql must not be empty")
    words = first_keyword(sql, 2)
    head = words[0] if words else ""
    refused = head in _REFUSED or (
        head == "SET" and not (in_transaction and words[1:] in (["LOCAL"], ["TRANSACTION"]))
    )
    if refused:
        raise InvalidArgument(
            f"{head} is not allowed here: statements run on pooled connections, so transaction "
            "control (use the 'transaction' operation), session settings, session prepared "
            "statements, LISTEN/UNLISTEN (use 'subscribe') and COPY are refused"
        )


class SqlRunner:
    def __init__(self, pool: Pool, max_rows: int) -> None:
        self.pool = pool
        self.max_rows = max_rows

    def _statement(
        self, statement: DataStatement | tuple[str, Sequence[Value]], where: str
    ) -> Statement:
        sql, params = (
            (statement.sql, statement.params) if isinstance(statement, DataStatement) else statement
        )
        return Statement(sql.encode(), encode_params(params, where))

    def _result(self, result: pq.abc.PGresult, where: str) -> StatementResult:
        if result.status == _COMMAND_OK:
            return StatementResult(rows_affected=int(result.command_tuples or 0))
        if result.status != _TUPLES_OK:
            raise statement_error(result, where)
        if result.ntuples > self.max_rows:
            raise ResourceExhausted(
                f"{where}the statement returned {result.ntuples} rows, more than {self.max_rows} "
                "(config.max_query_rows): add a LIMIT, or page with a WHERE on the key"
            )
        columns, decoders = [], []
        for c in range(result.nfields):
            name = (result.fname(c) or b"").decode()
            oid = result.ftype(c)
            columns.append(Column(name=name, type=_type_name(oid)))
            decoders.append(decoder_for(oid))
        rows = []
        for r in range(result.ntuples):
            values = []
            for c, decode in enumerate(decoders):
                raw = result.get_value(r, c)
                values.append(NULL if raw is None else decode(raw))
            rows.append(Row(values=values))
        # INSERT/UPDATE/DELETE ... RETURNING count their rows; a SELECT affects none.
        status = (result.command_status or b"").split(b" ", 1)[0]
        affected = int(result.command_tuples or 0) if status != b"SELECT" else 0
        return StatementResult(rows_affected=affected, columns=columns, rows=rows)

    async def run(self, sql: str, params: Sequence[Value]) -> StatementResult:
        """One statement, committed on its own."""
        _check(sql, in_transaction=False)
        statement = self._statement((sql, params), "")
        async with self.pool.connection() as lease:
            (result,) = await lease.run([statement])
            await _left_open(lease)
        return self._result(result, "")

    async def transaction(self, statements: Sequence[DataStatement]) -> list[StatementResult]:
        """Every statement, or none of them."""
        prepared = []
        for index, statement in enumerate(statements):
            where = f"statement {index}: "
            try:
                _check(statement.sql, in_transaction=True)
            except GrpcError as refused:
                raise GrpcError.for_status(refused.status, where + refused.message) from None
            prepared.append(self._statement(statement, where))
        if not prepared:
            return []
        async with self.pool.connection() as lease:
            results = (await lease.run([Statement(b"BEGIN"), *prepared]))[1:]
            outcome: list[StatementResult] = []
            error: GrpcError | None = None
            for index, result in enumerate(results):
                try:
                    outcome.append(self._result(result, f"statement {index}: "))
                except GrpcError as failed:
                    error = failed
                    break
            (end,) = await lease.run([Statement(b"ROLLBACK" if error else b"COMMIT")])
            if error is not None:
                raise error
            if end.status != _COMMAND_OK:
                raise statement_error(end, "commit: ")
            await _left_open(lease)
        return outcome


async def _left_open(lease: Lease) -> None:
    """A statement that got past the checks and left a transaction open (a function doing
    transaction control): roll it back, and say so."""
    if lease.connection.in_transaction:
        await lease.connection.rollback()
        raise InvalidArgument(
            "the statement left a transaction open; it was rolled back (use the 'transaction' "
            "operation)"
        )


_TYPE_NAMES = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 23: "int4",
    25: "text", 26: "oid", 114: "json", 700: "float4", 701: "float8", 1042: "bpchar",
    1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp", 1184: "timestamptz",
    1186: "interval", 1700: "numeric", 2950: "uuid", 3802: "jsonb", 1000: "_bool",
    1001: "_bytea", 1005: "_int2", 1007: "_int4", 1016: "_int8", 1009: "_text",
    1015: "_varchar", 1021: "_float4", 1022: "_float8", 1115: "_timestamp",
    1185: "_timestamptz", 199: "_json", 3807: "_jsonb", 869: "inet", 650: "cidr",
}  # fmt: skip


def _type_name(oid: int) -> str:
    """PostgreSQL's name for a built-in type; other types by number (``oid:16384``)."""
    return _TYPE_NAMES.get(oid, f"oid:{oid}")
