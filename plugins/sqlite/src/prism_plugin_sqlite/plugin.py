"""sqlite: a durable key-value store on the standard library's sqlite3.

sqlite3 blocks, so every database call runs in a worker thread (``trio.to_thread.run_sync``)
behind a ``CapacityLimiter(1)``: one connection, one statement at a time, and the event loop
stays free. A cancelled operation still waits for its statement to finish (sqlite3 calls cannot
be abandoned safely); statements are short and bounded by ``busy_timeout_ms``.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import trio

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    SetRequest,
    SetResponse,
)
from prism.sdk import (
    BackendPlugin,
    FailedPrecondition,
    HealthReport,
    HealthStatus,
    InvalidArgument,
    InvalidConfig,
    OperationContext,
    Unavailable,
    operation,
)
from prism_plugin_sqlite._proto.prism.plugins.sqlite.v1 import SqliteConfig
from prism_plugin_sqlite.db import Database

__all__ = ["SqlitePlugin"]

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_SWEEP_INTERVAL_MS = 60_000
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000


def _key(key: str) -> str:
    if not key:
        raise InvalidArgument("key must not be empty")
    return key


class SqlitePlugin(BackendPlugin):
    name = "sqlite"
    version = "0.1.0"
    config_type = SqliteConfig
    # Absent is all defaults, so the missing field is named (config.path: required).
    config_required = False

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        """``clock``: wall-clock seconds since the epoch (injectable for TTL tests)."""
        super().__init__()
        self._clock = clock
        self._limiter = trio.CapacityLimiter(1)
        self._db: Database | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise Unavailable("the SQLite database is locked by another connection") from None
            raise

    @property
    def db(self) -> Database:
        if self._db is None:
            raise Unavailable("the SQLite database is closed")
        return self._db

    async def initialize(
        self, config: SqliteConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        if not config.path:
            raise InvalidConfig("path", "required (the database file)")
        for field in ("busy_timeout_ms", "sweep_interval_ms"):
            if getattr(config, field) < 0:
                raise InvalidConfig(field, "must not be negative")
        busy_timeout = config.busy_timeout_ms or DEFAULT_BUSY_TIMEOUT_MS
        # Relative to the proxy's config file, like every path in it.
        path = config.path if config.path == ":memory:" else str(self.config_path(config.path))
        try:
            self._db = await self._run(functools.partial(Database, path, busy_timeout))
        except (OSError, sqlite3.Error) as exc:
            # sqlite3's and the OS's messages here describe the file, never credentials.
            raise FailedPrecondition(
                f"config.path: cannot open SQLite database {path!r}: {exc}"
            ) from None
        self.metrics.connections_active = 1
        interval = (config.sweep_interval_ms or DEFAULT_SWEEP_INTERVAL_MS) / 1000
        self.nursery.start_soon(self._sweep_forever, interval)

    async def _sweep_forever(self, interval: float) -> None:
        # Expired rows are already invisible to every read; this only reclaims their space.
        while True:
            await trio.sleep(interval)
            try:
                await self._run(functools.partial(self.db.sweep, self._now_ms()))
            except (Unavailable, sqlite3.Error) as exc:
                # Not worth ending the instance over: the next sweep tries again.
                self.logger.warning("sweeping expired keys failed: %s", type(exc).__name__)

    async def health(self) -> HealthReport:
        try:
            await self._run(self.db.ping)
        except (Unavailable, sqlite3.Error) as exc:
            return HealthReport(HealthStatus.UNHEALTHY, f"database unusable: {type(exc).__name__}")
        return HealthReport()

    async def shutdown(self, grace_seconds: float) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self.metrics.connections_active = 0

    # -- key-value -----------------------------------------------------------------------------

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        value = await self._run(functools.partial(self.db.get, _key(params.key), self._now_ms()))
        if value is None:
            return GetResponse(found=False)
        return GetResponse(found=True, value=value)

    @operation("set", params=SetRequest, result=SetResponse)
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        if params.ttl_ms < 0:
            raise InvalidArgument("ttl_ms must not be negative")
        expires_at = self._now_ms() + params.ttl_ms if params.ttl_ms else None
        await self._run(functools.partial(self.db.set, _key(params.key), params.value, expires_at))
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        deleted = await self._run(
            functools.partial(self.db.delete, _key(params.key), self._now_ms())
        )
        return DeleteResponse(deleted=deleted)

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        exists = await self._run(
            functools.partial(self.db.exists, _key(params.key), self._now_ms())
        )
        return ExistsResponse(exists=exists)

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        if params.limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(params.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        keys, truncated = await self._run(
            functools.partial(
                self.db.list_keys, params.prefix, params.start_after, limit, self._now_ms()
            )
        )
        return ListKeysResponse(keys=keys, truncated=truncated)
