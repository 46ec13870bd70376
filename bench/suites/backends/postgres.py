"""PostgreSQL in the `backends` suite: PostgreSQL 15 with SCRAM (the acceptance framework's
server), the postgres plugin in-process and as a sidecar, and psycopg 3 (sync, prepared
statements, 8 connections as the plugin has) called directly as the baseline: the SELECT by
primary key the plugin's `get` runs, and its one `WHERE key = ANY(...)` for `get_many`.

`python -m bench backends-postgres` (bench/backends/postgres.py) is the longer study of the
same backend: psycopg's libpq core on Trio as the baseline, and the driver comparison."""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.suites.backends import Backend, Direct, Running, register
from bench.suites.backends.servers import module

TABLE = "bench_kv"
POOL = 8  # connections: the direct client's and each plugin namespace's (pool_size)
_LIVE = "(expires_at IS NULL OR expires_at > now())"


class PostgresDirect(Direct):
    """psycopg 3, sync: a pool of ``POOL`` connections (the plugin's pool size) shared by the
    caller threads, each taken for one statement (a psycopg connection serializes its callers;
    one per caller thread would pass the server's ``max_connections`` at 32 callers), every
    statement prepared on the server (``prepare_threshold=0``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import psycopg

        self._all = [
            psycopg.connect(spec["dsn"], autocommit=True, prepare_threshold=0) for _ in range(POOL)
        ]
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for connection in self._all:
            self._free.put(connection)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        connection = self._free.get()
        try:
            yield connection
        finally:
            self._free.put(connection)

    def seed(self, keys: Sequence[str], value: bytes) -> None:
        with self._connection() as connection, connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} (key, value, version) VALUES (%s, %s, 1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = NULL",
                [(k.encode(), value) for k in keys],
            )

    def get(self, key: str) -> bytes | None:
        with self._connection() as connection:
            row = connection.execute(
                f"SELECT value FROM {TABLE} WHERE key = %b AND {_LIVE}", (key.encode(),)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._connection() as connection:
            rows = connection.execute(
                f"SELECT key, value FROM {TABLE} WHERE key = ANY(%b) AND {_LIVE}",
                ([k.encode() for k in keys],),
            ).fetchall()
        found = {bytes(k): bytes(v) for k, v in rows}
        return [found.get(k.encode()) for k in keys]

    def close(self) -> None:
        for connection in self._all:
            connection.close()
        self._all.clear()


class PostgresRunning(Running):
    def __init__(self, tmp: Path) -> None:
        self.server = module().PostgresServer()
        self.server.start()
        credentials = self.server.credentials
        (tmp / "postgres-password").write_text(credentials.password)
        self.password_file = tmp / "postgres-password"

    def namespaces(self) -> dict[str, dict[str, Any]]:
        connection = self.server.connection
        credentials = {
            "username": self.server.credentials.username,
            "password": "{{ file:" + str(self.password_file) + " }}",
        }
        return {
            f"postgres-{mode}": {
                "plugin": {"name": "postgres", "mode": mode},
                "config": {
                    "host": connection["host"],
                    "port": connection["port"],
                    "database": connection["database"],
                    "table": TABLE,
                    "create_table": True,
                    "pool_size": POOL,
                    "application_name": f"bench-{mode}",
                },
                "credentials": credentials,
            }
            for mode in ("in_process", "sidecar")
        }

    def direct_spec(self) -> dict[str, Any]:
        credentials = self.server.credentials
        return {"dsn": self.server.dsn(credentials.username, credentials.password)}

    def stop(self) -> None:
        self.server.stop()


register(
    Backend(
        name="postgres",
        label="PostgreSQL SELECT by key",
        direct_label="psycopg 3 (sync, prepared)",
        bulk_label="psycopg WHERE key = ANY",
        start=PostgresRunning,
        direct=PostgresDirect,
        packages=("psycopg",),
    )
)
