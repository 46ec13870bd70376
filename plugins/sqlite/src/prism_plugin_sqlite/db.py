"""The SQLite side of the sqlite plugin: blocking calls, run in a worker thread by the plugin.

One connection, used by one thread at a time (the plugin's ``CapacityLimiter(1)``), in WAL mode
with ``synchronous=FULL``: a write the plugin acknowledged survives a crash or power loss.
Expiry times are wall-clock milliseconds since the epoch, so TTLs survive restarts.

Every write gives the row a new random 63-bit ``version`` (its etag, in hex): random rather
than counted, so other processes writing the same file need no shared counter, and an etag
kept from a deleted row does not match the row written after it. A conditional write is one
statement whose ``WHERE`` holds the condition; bulk writes and transactions run in one
``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Conflict",
    "Database",
    "Remove",
    "Row",
    "TransactionAborted",
    "Write",
    "etag",
    "make_private_parents",
    "prefix_successor",
]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prism_kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    expires_at INTEGER,  -- wall-clock ms since the epoch; NULL = never
    version INTEGER NOT NULL DEFAULT 0  -- random per write: the etag
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prism_kv_expiry ON prism_kv (expires_at) WHERE expires_at IS NOT NULL;
"""
_MIGRATE_FROM_1 = (
    "ALTER TABLE prism_kv ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
    "UPDATE prism_kv SET version = random() & 9223372036854775807",
)
_UPSERT = (
    "INSERT INTO prism_kv (key, value, expires_at, version) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "expires_at = excluded.expires_at, version = excluded.version"
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_ETAG = re.compile(r"[0-9a-f]{1,16}\Z")


def etag(version: int) -> str:
    return f"{version:x}"


def _version(etag_text: str) -> int:
    """The version an etag names; -1 (no row has it) for text that is not one of ours."""
    return int(etag_text, 16) if _ETAG.match(etag_text) else -1


def _new_version() -> int:
    return secrets.randbits(63)


@dataclass(frozen=True, slots=True)
class Row:
    value: bytes
    version: int
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Write:
    key: str
    value: bytes
    expires_at: int | None
    if_match: str = ""
    if_absent: bool = False


@dataclass(frozen=True, slots=True)
class Remove:
    key: str
    if_match: str = ""


class Conflict(Exception):
    """A write's condition failed; nothing of it (or of its transaction) was written."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: no bound).

    Keys compare by code point, which for UTF-8 text is also SQLite's BINARY (memcmp) order, so
    ``prefix <= key < prefix_successor(prefix)`` is a range scan on the primary key.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates are not valid in UTF-8 keys
                following = 0xE000
            return "".join(chars) + chr(following)
    return None


def make_private_parents(directory: Path) -> None:
    """Create ``directory`` and whichever of its parents are missing, each mode 0700 (a database
    directory is nobody else's business); existing ones are left as they are. OSError when one
    cannot be created (a parent is a file, no permission)."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for created in reversed(missing):
        try:
            created.mkdir(mode=0o700)
        except FileExistsError:
            if not created.is_dir():
                raise NotADirectoryError(
                    f"{str(created)!r} exists and is not a directory"
                ) from None
            # Another process made it meanwhile: fine.


class Database:
    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        if path != ":memory:":
            # sqlite3 creates the file but not its directory: create what is missing, private.
            make_private_parents(Path(path).expanduser().absolute().parent)
        # check_same_thread=False: the plugin's CapacityLimiter(1) serializes all use, but
        # trio's worker threads may differ from call to call.
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"database schema version {version} is newer than this plugin's "
                    f"({SCHEMA_VERSION})"
                )
            if version == 1:
                with self.transaction():
                    for statement in _MIGRATE_FROM_1:
                        self._db.execute(statement)
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` (the write lock at once, so no deadlock on upgrade) ... ``COMMIT``;
        any exception rolls back."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, key: str, now_ms: int) -> bytes | None:
        row = self.read(key, now_ms)
        return None if row is None else row.value

    def read(self, key: str, now_ms: int) -> Row | None:
        found = self._db.execute(
            f"SELECT value, version, expires_at FROM prism_kv WHERE key = ? AND {_LIVE}",
            (key, now_ms),
        ).fetchone()
        return None if found is None else Row(bytes(found[0]), found[1], found[2])

    def read_many(self, keys: Sequence[str], now_ms: int) -> dict[str, Row]:
        """The live rows among ``keys`` (one statement; the plugin caps ``len(keys)``)."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        marks = ", ".join("?" * len(unique))
        found = self._db.execute(
            f"SELECT key, value, version, expires_at FROM prism_kv "
            f"WHERE key IN ({marks}) AND {_LIVE}",
            (*unique, now_ms),
        ).fetchall()
        return {key: Row(bytes(value), version, expires) for key, value, version, expires in found}

    def set(self, key: str, value: bytes, expires_at_ms: int | None) -> str:
        return self.write(Write(key, value, expires_at_ms), 0)

    def write(self, item: Write, now_ms: int) -> str:
        """Set ``item`` if its condition holds; returns the new etag, or raises ``Conflict``."""
        version = _new_version()
        if item.if_match:
            cursor = self._db.execute(
                f"UPDATE prism_kv SET value = ?, expires_at = ?, version = ? "
                f"WHERE key = ? AND version = ? AND {_LIVE}",
                (item.value, item.expires_at, version, item.key, _version(item.if_match), now_ms),
            )
        elif item.if_absent:
            # An existing row is overwritten only when it has expired.
            cursor = self._db.execute(
                f"{_UPSERT} WHERE prism_kv.expires_at IS NOT NULL AND prism_kv.expires_at <= ?",
                (item.key, item.value, item.expires_at, version, now_ms),
            )
        else:
            cursor = self._db.execute(_UPSERT, (item.key, item.value, item.expires_at, version))
        if cursor.rowcount == 0:
            raise self._conflict(item.key, item.if_match, now_ms)
        return etag(version)

    def delete(self, key: str, now_ms: int) -> bool:
        """Remove ``key`` (expired or not); True when it was live."""
        return self.remove(Remove(key), now_ms)

    def remove(self, item: Remove, now_ms: int) -> bool:
        """Delete ``item``'s key if its condition holds (expired rows go either way); True when
        a live row was removed. Raises ``Conflict``."""
        if item.if_match:
            rows = self._db.execute(
                f"DELETE FROM prism_kv WHERE key = ? AND version = ? AND {_LIVE} RETURNING 1",
                (item.key, _version(item.if_match), now_ms),
            ).fetchall()
            if not rows:
                raise self._conflict(item.key, item.if_match, now_ms)
            return True
        rows = self._db.execute(
            "DELETE FROM prism_kv WHERE key = ? RETURNING expires_at", (item.key,)
        ).fetchall()
        return any(expires_at is None or expires_at > now_ms for (expires_at,) in rows)

    def _conflict(self, key: str, if_match: str, now_ms: int) -> Conflict:
        if not if_match:
            return Conflict(key, "the key exists (if_absent)")
        if self.read(key, now_ms) is None:
            return Conflict(key, "the key does not exist (if_match)")
        return Conflict(key, "etag mismatch (if_match)")

    def apply(self, item: Write | Remove, now_ms: int) -> str | bool:
        return self.write(item, now_ms) if isinstance(item, Write) else self.remove(item, now_ms)

    def apply_each(
        self, items: Sequence[Write | Remove], now_ms: int
    ) -> list[str | bool | Conflict]:
        """Bulk: every item in one transaction, each on its own condition; a failed condition
        is that item's result."""
        results: list[str | bool | Conflict] = []
        with self.transaction():
            for item in items:
                try:
                    results.append(self.apply(item, now_ms))
                except Conflict as conflict:
                    results.append(conflict)
        return results

    def apply_all(self, items: Sequence[Write | Remove], now_ms: int) -> list[str | bool]:
        """Transaction: every item or none; a failed condition raises ``TransactionAborted``."""
        with self.transaction():
            results: list[str | bool] = []
            for index, item in enumerate(items):
                try:
                    results.append(self.apply(item, now_ms))
                except Conflict as conflict:
                    raise TransactionAborted(index, conflict) from None
        return results

    def expire(self, key: str, expires_at_ms: int | None, now_ms: int) -> bool:
        """A live key's new expiry (None = never), value and version unchanged."""
        rows = self._db.execute(
            f"UPDATE prism_kv SET expires_at = ? WHERE key = ? AND {_LIVE} RETURNING 1",
            (expires_at_ms, key, now_ms),
        ).fetchall()
        return bool(rows)

    def exists(self, key: str, now_ms: int) -> bool:
        row = self._db.execute(
            f"SELECT 1 FROM prism_kv WHERE key = ? AND {_LIVE}", (key, now_ms)
        ).fetchone()
        return row is not None

    def list_keys(
        self, prefix: str, start_after: str, limit: int, now_ms: int
    ) -> tuple[list[str], bool]:
        clauses = [_LIVE]
        args: list[object] = [now_ms]
        if start_after >= prefix:
            clauses.append("key > ?")
            args.append(start_after)
        else:
            clauses.append("key >= ?")
            args.append(prefix)
        upper = prefix_successor(prefix)
        if upper is not None:
            clauses.append("key < ?")
            args.append(upper)
        args.append(limit + 1)  # one more tells whether the page is truncated
        rows = self._db.execute(
            f"SELECT key FROM prism_kv WHERE {' AND '.join(clauses)} ORDER BY key LIMIT ?",
            args,
        ).fetchall()
        keys = [key for (key,) in rows]
        return keys[:limit], len(keys) > limit

    def sweep(self, now_ms: int) -> int:
        """Delete expired rows; returns how many."""
        cursor = self._db.execute(
            "DELETE FROM prism_kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (now_ms,)
        )
        return cursor.rowcount

    def count(self) -> int:
        """Rows held, including expired ones not yet swept."""
        (count,) = self._db.execute("SELECT count(*) FROM prism_kv").fetchone()
        return int(count)


class TransactionAborted(Exception):
    def __init__(self, index: int, conflict: Conflict) -> None:
        super().__init__(f"operation {index}: {conflict}")
        self.index = index
        self.conflict = conflict
