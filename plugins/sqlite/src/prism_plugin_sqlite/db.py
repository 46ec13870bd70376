"""The SQLite side of the sqlite plugin: blocking calls, run in a worker thread by the plugin.

One connection, used by one thread at a time (the plugin's ``CapacityLimiter(1)``), in WAL mode
with ``synchronous=FULL``: a write the plugin acknowledged survives a crash or power loss.
Expiry times are wall-clock milliseconds since the epoch, so TTLs survive restarts.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["Database", "make_private_parents", "prefix_successor"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prism_kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    expires_at INTEGER  -- wall-clock ms since the epoch; NULL = never
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prism_kv_expiry ON prism_kv (expires_at) WHERE expires_at IS NOT NULL;
"""

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


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
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    def get(self, key: str, now_ms: int) -> bytes | None:
        row = self._db.execute(
            f"SELECT value FROM prism_kv WHERE key = ? AND {_LIVE}", (key, now_ms)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes, expires_at_ms: int | None) -> None:
        self._db.execute(
            "INSERT INTO prism_kv (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at",
            (key, value, expires_at_ms),
        )

    def delete(self, key: str, now_ms: int) -> bool:
        """Remove ``key`` (expired or not); True when it was live."""
        rows = self._db.execute(
            "DELETE FROM prism_kv WHERE key = ? RETURNING expires_at", (key,)
        ).fetchall()
        return any(expires_at is None or expires_at > now_ms for (expires_at,) in rows)

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
