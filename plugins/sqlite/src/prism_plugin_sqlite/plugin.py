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

import betterproto2
import trio

from prism._proto.prism.data.v1 import (
    DeleteManyRequest,
    DeleteManyResponse,
    DeleteRequest,
    DeleteResponse,
    ExecuteStatementRequest,
    ExecuteStatementResponse,
    ExistsRequest,
    ExistsResponse,
    ExpireRequest,
    ExpireResponse,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ItemResult,
    ListKeysRequest,
    ListKeysResponse,
    QueryRequest,
    QueryResponse,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    TransactionRequest,
    TransactionResponse,
    TransactRequest,
    TransactResponse,
)
from prism.sdk import (
    Aborted,
    BackendPlugin,
    FailedPrecondition,
    HealthReport,
    HealthStatus,
    InvalidConfig,
    KeyValueLimits,
    OperationContext,
    Status,
    Unavailable,
    operation,
)
from prism_plugin_sqlite._proto.prism.plugins.sqlite.v1 import SqliteConfig
from prism_plugin_sqlite.db import (
    Conflict,
    Database,
    Remove,
    Row,
    TransactionAborted,
    Write,
    etag,
)
from prism_plugin_sqlite.sql import SqlRunner

__all__ = ["SqlitePlugin"]

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_SWEEP_INTERVAL_MS = 60_000
DEFAULT_LIST_LIMIT = 1000
DEFAULT_MAX_QUERY_ROWS = 10_000
MAX_LIST_LIMIT = 10_000


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
        self._max_query_rows = DEFAULT_MAX_QUERY_ROWS

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
        for field in ("busy_timeout_ms", "sweep_interval_ms", "max_query_rows"):
            if getattr(config, field) < 0:
                raise InvalidConfig(field, "must not be negative")
        self.kv_limits = KeyValueLimits.from_config(
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            max_batch=config.max_batch,
        )
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
        self._max_query_rows = config.max_query_rows or DEFAULT_MAX_QUERY_ROWS
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
    # The SDK has checked keys, values, shapes and features before a handler runs.

    def _expires_at(self, ttl_ms: int) -> int | None:
        return self._now_ms() + ttl_ms if ttl_ms else None

    def _response(self, row: Row | None, now_ms: int) -> GetResponse:
        if row is None:
            return GetResponse(found=False)
        remaining = None if row.expires_at is None else max(1, row.expires_at - now_ms)
        return GetResponse(
            found=True, value=row.value, etag=etag(row.version), ttl_remaining_ms=remaining
        )

    def _write(self, item: SetRequest) -> Write:
        return Write(
            item.key, item.value, self._expires_at(item.ttl_ms), item.if_match, item.if_absent
        )

    @operation("get", params=GetRequest, result=GetResponse, features=("etag", "ttl"))
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        now = self._now_ms()
        return self._response(
            await self._run(functools.partial(self.db.read, params.key, now)), now
        )

    @operation("set", params=SetRequest, result=SetResponse, features=("etag", "ttl"))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        write = functools.partial(self.db.write, self._write(params), self._now_ms())
        return SetResponse(etag=await self._conditional(write))

    @operation("delete", params=DeleteRequest, result=DeleteResponse, features=("etag",))
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        remove = functools.partial(
            self.db.remove, Remove(params.key, params.if_match), self._now_ms()
        )
        return DeleteResponse(deleted=await self._conditional(remove))

    async def _conditional(self, call: Callable[[], T]) -> T:
        try:
            return await self._run(call)
        except Conflict as conflict:
            raise Aborted(f"{conflict}; nothing was changed") from None

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        exists = await self._run(functools.partial(self.db.exists, params.key, self._now_ms()))
        return ExistsResponse(exists=exists)

    @operation("expire", params=ExpireRequest, result=ExpireResponse)
    async def expire(self, params: ExpireRequest, ctx: OperationContext) -> ExpireResponse:
        now = self._now_ms()
        expires_at = None if params.persist else now + params.ttl_ms
        found = await self._run(functools.partial(self.db.expire, params.key, expires_at, now))
        return ExpireResponse(found=found)

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        limit = min(params.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        keys, truncated = await self._run(
            functools.partial(
                self.db.list_keys, params.prefix, params.start_after, limit, self._now_ms()
            )
        )
        return ListKeysResponse(keys=keys, truncated=truncated)

    @operation("get_many", params=GetManyRequest, result=GetManyResponse, features=("etag", "ttl"))
    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        now = self._now_ms()
        rows = await self._run(functools.partial(self.db.read_many, params.keys, now))
        return GetManyResponse(items=[self._response(rows.get(key), now) for key in params.keys])

    @operation("set_many", params=SetManyRequest, result=SetManyResponse, features=("etag", "ttl"))
    async def set_many(self, params: SetManyRequest, ctx: OperationContext) -> SetManyResponse:
        items = [self._write(item) for item in params.items]
        outcomes = await self._run(functools.partial(self.db.apply_each, items, self._now_ms()))
        return SetManyResponse(results=[_item_result(outcome) for outcome in outcomes])

    @operation(
        "delete_many", params=DeleteManyRequest, result=DeleteManyResponse, features=("etag",)
    )
    async def delete_many(
        self, params: DeleteManyRequest, ctx: OperationContext
    ) -> DeleteManyResponse:
        items = [Remove(item.key, item.if_match) for item in params.items]
        outcomes = await self._run(functools.partial(self.db.apply_each, items, self._now_ms()))
        return DeleteManyResponse(results=[_item_result(outcome) for outcome in outcomes])

    @operation(
        "transact", params=TransactRequest, result=TransactResponse, features=("etag", "ttl")
    )
    async def transact(self, params: TransactRequest, ctx: OperationContext) -> TransactResponse:
        items: list[Write | Remove] = []
        for op in params.operations:
            _, item = betterproto2.which_one_of(op, "operation")
            if isinstance(item, SetRequest):
                items.append(self._write(item))
            elif isinstance(item, DeleteRequest):
                items.append(Remove(item.key, item.if_match))
        try:
            outcomes = await self._run(functools.partial(self.db.apply_all, items, self._now_ms()))
        except TransactionAborted as exc:
            kind = "set" if isinstance(items[exc.index], Write) else "delete"
            raise Aborted(
                f"operation {exc.index} ({kind} {exc.conflict.key!r}): {exc.conflict.reason}; "
                "nothing was written"
            ) from None
        return TransactResponse(results=[_item_result(outcome) for outcome in outcomes])

    # -- sql (prism.data.v1 sql.proto; see sql.py for types and what is refused) ---------------

    @property
    def sql(self) -> SqlRunner:
        return SqlRunner(self.db.connection, self._max_query_rows)

    @operation("query", params=QueryRequest, result=QueryResponse)
    async def query(self, params: QueryRequest, ctx: OperationContext) -> QueryResponse:
        result = await self._run(functools.partial(self.sql.run, params.sql, params.params))
        return QueryResponse(columns=result.columns, rows=result.rows)

    @operation("execute", params=ExecuteStatementRequest, result=ExecuteStatementResponse)
    async def execute(
        self, params: ExecuteStatementRequest, ctx: OperationContext
    ) -> ExecuteStatementResponse:
        result = await self._run(functools.partial(self.sql.run, params.sql, params.params))
        return ExecuteStatementResponse(rows_affected=result.rows_affected)

    @operation("transaction", params=TransactionRequest, result=TransactionResponse)
    async def transaction(
        self, params: TransactionRequest, ctx: OperationContext
    ) -> TransactionResponse:
        results = await self._run(functools.partial(self.sql.transaction, params.statements))
        return TransactionResponse(results=results)


def _item_result(outcome: str | bool | Conflict) -> ItemResult:
    if isinstance(outcome, Conflict):
        return ItemResult(code=Status.ABORTED, message=f"{outcome}; nothing was changed")
    if isinstance(outcome, bool):
        return ItemResult(deleted=outcome)
    return ItemResult(etag=outcome)
