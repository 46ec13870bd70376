"""The key-value contracts on one PostgreSQL table.

``key bytea PRIMARY KEY, value bytea, version bigint, expires_at timestamptz``: keys are their
UTF-8 bytes (``text`` cannot hold NUL, which keys may), compared byte by byte — code point order
— so ``list_keys`` is a range scan on the primary key.
Every write gives the row a new random 63-bit ``version`` (its etag, in hex). Expiry is the
server's clock: a row is live while ``expires_at`` is NULL or after ``now()``; reads hide expired
rows at once and a sweep deletes them later.

Round trips: every operation is one batch (``PgConnection.run``), so one round trip —
``get_many`` is one ``WHERE key = ANY($1)``; ``set_many``/``delete_many`` are their items'
statements in one batch, one implicit transaction; ``transact`` too when none of its operations
has a condition, else ``BEGIN`` + the operations in one batch, then ``COMMIT`` (or ``ROLLBACK``
when a condition failed) in a second. Conditions are in the statements' ``WHERE``, so of two
writers with one etag exactly one matches (the second waits for the first's row lock and then
sees the new version). Multi-key writes run in key order, so two of them never deadlock.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import betterproto2
from psycopg import pq

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    GetResponse,
    ItemResult,
    SetRequest,
    TransactOperation,
)
from prism.sdk import Aborted, Status
from prism_plugin_postgres.connection import Statement
from prism_plugin_postgres.errors import statement_error
from prism_plugin_postgres.pool import Lease, Pool
from prism_plugin_postgres.values import BYTEA, INT8, TEXT, Param

__all__ = ["KeyValueTable", "Table", "prefix_successor"]

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_BYTEA_ARRAY = 1001
_LIVE = "(expires_at IS NULL OR expires_at > now())"
_TTL = (
    "CASE WHEN expires_at IS NULL THEN NULL ELSE "
    "greatest(1, ceil(extract(epoch FROM expires_at - now()) * 1000))::int8 END"
)


def _expiry(param: int) -> str:
    return (
        f"CASE WHEN ${param}::int8 > 0 THEN now() + ${param}::int8 * interval '1 millisecond' END"
    )


@dataclass(frozen=True)
class Table:
    """The table's quoted name and the statements on it."""

    schema: str  # "" = the search path's
    name: str

    @property
    def quoted(self) -> str:
        name = f'"{self.name}"'
        return f'"{self.schema}".{name}' if self.schema else name

    def related(self, suffix: str) -> str:
        name = f'"{self.name}{suffix}"'
        return f'"{self.schema}".{name}' if self.schema else name

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def ddl(self) -> list[bytes]:
        t, topics = self.quoted, self.related("_topics")
        index = f'"{self.name}_expiry"'
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (key bytea PRIMARY KEY, "
            "value bytea NOT NULL, version bigint NOT NULL, expires_at timestamptz)".encode(),
            f"CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) "
            "WHERE expires_at IS NOT NULL".encode(),
            f"CREATE TABLE IF NOT EXISTS {topics} (topic bytea PRIMARY KEY, "
            "sequence bigint NOT NULL)".encode(),
        ]


class _Sql:
    def __init__(self, table: Table) -> None:
        t = table.quoted
        upsert = (
            f"INSERT INTO {t} AS cur (key, value, version, expires_at) "
            f"VALUES ($1, $2, $3, {_expiry(4)}) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value, version = excluded.version, expires_at = excluded.expires_at"
        )
        self.get = f"SELECT value, version, {_TTL} FROM {t} WHERE key = $1 AND {_LIVE}".encode()
        self.get_many = (
            f"SELECT key, value, version, {_TTL} FROM {t} WHERE key = ANY($1) AND {_LIVE}"
        ).encode()
        self.live_keys = f"SELECT key FROM {t} WHERE key = ANY($1) AND {_LIVE}".encode()
        self.exists = f"SELECT 1 FROM {t} WHERE key = $1 AND {_LIVE}".encode()
        self.set = upsert.encode()
        self.set_if_absent = (
            f"{upsert} WHERE cur.expires_at IS NOT NULL AND cur.expires_at <= now()"
        ).encode()
        self.set_if_match = (
            f"UPDATE {t} SET value = $2, version = $3, expires_at = {_expiry(4)} "
            f"WHERE key = $1 AND version = $5 AND {_LIVE}"
        ).encode()
        self.delete = f"DELETE FROM {t} WHERE key = $1 RETURNING {_LIVE}".encode()
        self.delete_if_match = (
            f"DELETE FROM {t} WHERE key = $1 AND version = $2 AND {_LIVE}"
        ).encode()
        self.expire = (
            f"UPDATE {t} SET expires_at = {_expiry(2)} WHERE key = $1 AND {_LIVE}"
        ).encode()
        self.list = {
            (inclusive, bounded): (
                f"SELECT key FROM {t} WHERE key {'>=' if inclusive else '>'} $1 "
                + ("AND key < $3 " if bounded else "")
                + f"AND {_LIVE} ORDER BY key LIMIT $2"
            ).encode()
            for inclusive in (True, False)
            for bounded in (True, False)
        }
        self.sweep = (
            f"DELETE FROM {t} WHERE key IN (SELECT key FROM {t} "
            "WHERE expires_at <= now() LIMIT 1000)"
        ).encode()
        self.publish = (
            f"WITH s AS (INSERT INTO {table.related('_topics')} AS cur (topic, sequence) "
            "VALUES ($1, 1) ON CONFLICT (topic) DO UPDATE SET sequence = cur.sequence + 1 "
            "RETURNING sequence) SELECT sequence, pg_notify($2, sequence::text || ':' || $3) "
            "FROM s"
        ).encode()


def prefix_successor(prefix: bytes) -> bytes | None:
    """The least byte string greater than every one starting with ``prefix`` (None: no
    bound). UTF-8 has no 0xFF byte, so for keys this is the next prefix of the same length."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _key(key: str) -> Param:
    return key.encode(), BYTEA, 1


def _text(value: str) -> Param:
    return value.encode(), TEXT, 0


def _int8(value: int) -> Param:
    return str(value).encode(), INT8, 0


_LENGTHS = [struct.pack("!i", n) for n in range(256)]  # an array element's length, below 256


def _key_array(values: Sequence[str]) -> Param:
    """A ``bytea[]`` parameter of keys, in binary format (no quoting to get wrong)."""
    if not values:
        return struct.pack("!iiI", 0, 0, BYTEA), _BYTEA_ARRAY, 1
    parts = [struct.pack("!iiIii", 1, 0, BYTEA, len(values), 1)]
    append = parts.append
    for value in values:
        item = value.encode()
        n = len(item)
        append(_LENGTHS[n] + item if n < 256 else struct.pack("!i", n) + item)
    return b"".join(parts), _BYTEA_ARRAY, 1


def _int(raw: bytes | None) -> int | None:
    return None if raw is None else int.from_bytes(raw, "big", signed=True)


def etag(version: int) -> str:
    return f"{version:x}"


def _version(text: str) -> int:
    """The version an etag names; -1 (no row has it) for text that is not one of ours."""
    try:
        value = int(text, 16)
    except ValueError:
        return -1
    return value if 0 <= value < 1 << 63 else -1


@dataclass(frozen=True, slots=True)
class _Op:
    """One write, as a statement, and how to read its result."""

    key: str
    statement: Statement
    kind: str  # "set", "delete", "delete_if_match"
    conditional: bool
    etag: str = ""


class KeyValueTable:
    def __init__(self, pool: Pool, table: Table) -> None:
        self.pool = pool
        self.table = table
        self.sql = _Sql(table)

    async def _one(self, statement: Statement) -> pq.abc.PGresult:
        async with self.pool.connection() as lease:
            (result,) = await lease.run([statement])
        _raise_for(result)
        return result

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def _response(value: bytes | None, version: bytes | None, ttl: bytes | None) -> GetResponse:
        assert value is not None
        assert version is not None
        # Positional: get_many builds one per key, and keywords cost more per message.
        return GetResponse(True, value, etag(_int(version) or 0), _int(ttl))

    async def get(self, key: str) -> GetResponse:
        result = await self._one(Statement(self.sql.get, [_key(key)], binary=True))
        if not result.ntuples:
            return GetResponse(found=False)
        return self._response(*(result.get_value(0, c) for c in range(3)))

    async def get_many(self, keys: Sequence[str]) -> list[GetResponse]:
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))
        result = await self._one(Statement(self.sql.get_many, [_key_array(unique)], binary=True))
        found: dict[str, GetResponse] = {}
        value = result.get_value
        response = self._response
        for row in range(result.ntuples):
            raw_key = value(row, 0)
            assert raw_key is not None
            found[raw_key.decode()] = response(value(row, 1), value(row, 2), value(row, 3))
        # Not `found.get(key) or ...`: a betterproto2 message's truth value compares every
        # field with its default under warnings.catch_warnings (~11 µs per message on a busy
        # 2-core machine, 100 of them were most of a 100-key read's plugin time).
        return [GetResponse() if (item := found.get(key)) is None else item for key in keys]

    async def exists(self, key: str) -> bool:
        result = await self._one(Statement(self.sql.exists, [_key(key)], binary=True))
        return result.ntuples > 0

    async def list_keys(self, prefix: str, start_after: str, limit: int) -> tuple[list[str], bool]:
        low, high = prefix.encode(), start_after.encode()
        inclusive = high < low
        upper = prefix_successor(low) if low else None
        bound: Param = (low if inclusive else high, BYTEA, 1)
        params = [bound, _int8(limit + 1)]  # one more tells whether there are more
        if upper is not None:
            params.append((upper, BYTEA, 1))
        result = await self._one(
            Statement(self.sql.list[(inclusive, upper is not None)], params, binary=True)
        )
        keys = []
        for row in range(result.ntuples):
            raw = result.get_value(row, 0)
            assert raw is not None
            keys.append(raw.decode())
        return keys[:limit], len(keys) > limit

    # -- writes --------------------------------------------------------------------------------

    def _set_op(self, item: SetRequest) -> _Op:
        version = secrets.randbits(63)
        params = [_key(item.key), (item.value, BYTEA, 1), _int8(version), _int8(item.ttl_ms)]
        if item.if_match:
            sql = self.sql.set_if_match
            params.append(_int8(_version(item.if_match)))
        else:
            sql = self.sql.set_if_absent if item.if_absent else self.sql.set
        conditional = bool(item.if_match or item.if_absent)
        return _Op(item.key, Statement(sql, params, binary=True), "set", conditional, etag(version))

    def _delete_op(self, item: DeleteRequest) -> _Op:
        if item.if_match:
            params = [_key(item.key), _int8(_version(item.if_match))]
            return _Op(
                item.key,
                Statement(self.sql.delete_if_match, params, binary=True),
                "delete_if_match",
                True,
            )
        return _Op(
            item.key, Statement(self.sql.delete, [_key(item.key)], binary=True), "delete", False
        )

    @staticmethod
    def _outcome(op: _Op, result: pq.abc.PGresult) -> str | bool | None:
        """The op's etag (set) or deleted flag (delete); None when its condition failed."""
        if op.kind == "delete":
            return any(result.get_value(r, 0) == b"\x01" for r in range(result.ntuples))
        changed = int(result.command_tuples or 0)
        if not changed:
            return None
        return op.etag if op.kind == "set" else True

    async def _reason(self, lease: Lease, ops: Sequence[_Op]) -> dict[str, str]:
        """Why each failed op's condition failed (for the message), read after the fact."""
        keys = list(dict.fromkeys(op.key for op in ops))
        (result,) = await lease.run(
            [Statement(self.sql.live_keys, [_key_array(keys)], binary=True)]
        )
        live = set()
        if result.status == _TUPLES_OK:
            live = {(result.get_value(r, 0) or b"").decode() for r in range(result.ntuples)}
        reasons = {}
        for op in ops:
            if op.kind == "set" and not op.statement.sql.startswith(b"UPDATE"):
                reasons[op.key] = "the key exists (if_absent)"
            elif op.key in live:
                reasons[op.key] = "etag mismatch (if_match)"
            else:
                reasons[op.key] = "the key does not exist (if_match)"
        return reasons

    async def write(self, item: SetRequest | DeleteRequest) -> str | bool:
        op = self._set_op(item) if isinstance(item, SetRequest) else self._delete_op(item)
        async with self.pool.connection() as lease:
            (result,) = await lease.run([op.statement])
            _raise_for(result)
            outcome = self._outcome(op, result)
            if outcome is None:
                reason = (await self._reason(lease, [op]))[op.key]
                raise Aborted(f"key {op.key!r}: {reason}; nothing was changed")
        return outcome

    async def expire(self, key: str, ttl_ms: int) -> bool:
        result = await self._one(
            Statement(self.sql.expire, [_key(key), _int8(ttl_ms)], binary=True)
        )
        return bool(int(result.command_tuples or 0))

    def _ops(self, items: Sequence[SetRequest | DeleteRequest]) -> list[_Op]:
        return [
            self._set_op(item) if isinstance(item, SetRequest) else self._delete_op(item)
            for item in items
        ]

    async def apply_each(self, items: Sequence[SetRequest | DeleteRequest]) -> list[ItemResult]:
        """Bulk: every item on its own condition, in one batch (one implicit transaction)."""
        ops = self._ops(items)
        if not ops:
            return []
        order = sorted(range(len(ops)), key=lambda i: ops[i].key)  # stable: per-key order kept
        async with self.pool.connection() as lease:
            results = await lease.run([ops[i].statement for i in order])
            for result in results:
                _raise_for(result)
            outcomes: list[str | bool | None] = [None] * len(ops)
            for position, index in enumerate(order):
                outcomes[index] = self._outcome(ops[index], results[position])
            failed = [ops[i] for i, outcome in enumerate(outcomes) if outcome is None]
            reasons = await self._reason(lease, failed) if failed else {}
        return [_item(op, outcome, reasons) for op, outcome in zip(ops, outcomes, strict=True)]

    async def apply_all(self, operations: Sequence[TransactOperation]) -> list[ItemResult]:
        """Transact: all operations or none; a failed condition aborts, naming its index."""
        items: list[SetRequest | DeleteRequest] = []
        for op in operations:
            _, item = betterproto2.which_one_of(op, "operation")
            assert isinstance(item, SetRequest | DeleteRequest)
            items.append(item)
        ops = self._ops(items)
        if not ops:
            return []
        order = sorted(range(len(ops)), key=lambda i: ops[i].key)
        decide = any(op.conditional for op in ops)
        statements = [ops[i].statement for i in order]
        async with self.pool.connection() as lease:
            if decide:
                statements.insert(0, Statement(b"BEGIN"))
            results = await lease.run(statements)
            if decide:
                results = results[1:]
            failure = next(
                (r for r in results if r.status != _TUPLES_OK and r.status != _COMMAND_OK), None
            )
            outcomes: list[str | bool | None] = [None] * len(ops)
            if failure is None:
                for position, index in enumerate(order):
                    outcomes[index] = self._outcome(ops[index], results[position])
            failed = next((i for i, outcome in enumerate(outcomes) if outcome is None), None)
            if decide:
                ok = failure is None and failed is None
                (end,) = await lease.run([Statement(b"COMMIT" if ok else b"ROLLBACK")])
                _raise_for(end)
            if failure is not None:
                _raise_for(failure)
            if failed is not None:
                op = ops[failed]
                reason = (await self._reason(lease, [op]))[op.key]
                kind = "set" if op.kind == "set" else "delete"
                raise Aborted(
                    f"operation {failed} ({kind} {op.key!r}): {reason}; nothing was written"
                )
        return [_item(op, outcome, {}) for op, outcome in zip(ops, outcomes, strict=True)]

    async def publish(self, topic: str, channel: str, envelope: str) -> int:
        """Notify ``channel`` with the topic's next sequence number; returns it."""
        params = [_key(topic), _text(channel), _text(envelope)]
        result = await self._one(Statement(self.sql.publish, params, binary=True))
        return _int(result.get_value(0, 0)) or 0

    # -- maintenance ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete expired rows, 1000 per statement; returns how many."""
        total = 0
        while True:
            result = await self._one(Statement(self.sql.sweep))
            deleted = int(result.command_tuples or 0)
            total += deleted
            if deleted < 1000:
                return total


def _item(op: _Op, outcome: str | bool | None, reasons: dict[str, str]) -> ItemResult:
    if outcome is None:
        reason = reasons.get(op.key, "condition failed")
        return ItemResult(
            code=Status.ABORTED, message=f"key {op.key!r}: {reason}; nothing was changed"
        )
    if isinstance(outcome, bool):
        return ItemResult(deleted=outcome)
    return ItemResult(etag=outcome)


def _raise_for(result: pq.abc.PGresult) -> None:
    if result.status not in (_TUPLES_OK, _COMMAND_OK):
        raise statement_error(result)
