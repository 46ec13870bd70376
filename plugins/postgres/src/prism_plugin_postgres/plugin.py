"""postgres: the key-value contracts over a table, the ``sql`` contract, and publish/subscribe on
LISTEN/NOTIFY, on PostgreSQL.

The driver is psycopg 3's libpq core (C, from psycopg-binary) run on the Trio event loop itself
with Trio wait functions (wait.py): no worker threads, no second event loop. The README has the
measurements that chose it, and the reasons.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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
    ListKeysRequest,
    ListKeysResponse,
    Message,
    PublishRequest,
    PublishResponse,
    QueryRequest,
    QueryResponse,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    SubscribeRequest,
    TransactionRequest,
    TransactionResponse,
    TransactRequest,
    TransactResponse,
)
from prism.sdk import (
    BackendPlugin,
    FailedPrecondition,
    GrpcError,
    HealthReport,
    HealthStatus,
    InvalidConfig,
    KeyValueLimits,
    OperationContext,
    OperationStream,
    Unavailable,
    operation,
    stream_operation,
)
from prism_plugin_postgres._proto.prism.plugins.postgres.v1 import PostgresConfig
from prism_plugin_postgres.connection import Statement
from prism_plugin_postgres.errors import statement_error
from prism_plugin_postgres.kv import KeyValueTable, Table
from prism_plugin_postgres.listen import Listener, channel, envelope
from prism_plugin_postgres.pool import Pool, Settings
from prism_plugin_postgres.sql import SqlRunner

__all__ = ["PostgresPlugin"]

DEFAULT_PORT = 5432
DEFAULT_POOL_SIZE = 4
DEFAULT_CONNECT_TIMEOUT_MS = 10_000
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_SWEEP_INTERVAL_MS = 60_000
DEFAULT_MAX_QUERY_ROWS = 10_000
DEFAULT_PREPARED_STATEMENTS = 256
DEFAULT_SUBSCRIBER_BUFFER = 1024
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
MAX_POOL_SIZE = 1000
TLS_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_TABLE_BYTES = 56  # 63 (NAMEDATALEN - 1) less "_topics"
#: Serializes CREATE TABLE IF NOT EXISTS between instances starting at once (which would
#: otherwise race on the catalog's unique index): an advisory lock key of the plugin's own.
_DDL_LOCK = 0x7072_6973_6D00  # "prism\0"


def parse_table(text: str) -> Table:
    """``table`` or ``schema.table`` (see the config proto); InvalidConfig otherwise."""
    schema, _, name = (text or "prism_kv").rpartition(".")
    for part in (name, schema) if schema else (name,):
        if not _IDENTIFIER.match(part):
            raise InvalidConfig(
                "table", "must be an identifier (letters, digits, '_', not starting with a digit)"
            )
    if len(name) > _MAX_TABLE_BYTES or len(schema) > 63:
        raise InvalidConfig("table", f"a table name is at most {_MAX_TABLE_BYTES} bytes")
    return Table(schema, name)


class PostgresPlugin(BackendPlugin):
    name = "postgres"
    version = "0.1.0"
    config_type = PostgresConfig
    config_required = False  # absent: every required field is named (config.host: required)
    required_credentials = ("username", "password")

    def __init__(self) -> None:
        super().__init__()
        self._pool: Pool | None = None
        self._kv: KeyValueTable | None = None
        self._sql: SqlRunner | None = None
        self._listener: Listener | None = None

    # -- lifetime ------------------------------------------------------------------------------

    def _settings(self, config: PostgresConfig, credentials: Mapping[str, str]) -> Settings:
        if not config.host:
            raise InvalidConfig("host", "required (a host name, an address or a socket directory)")
        if not config.database:
            raise InvalidConfig("database", "required")
        for field in (
            "port",
            "pool_size",
            "connect_timeout_ms",
            "statement_timeout_ms",
            "sweep_interval_ms",
            "max_query_rows",
            "prepared_statements",
            "subscriber_buffer",
        ):
            if getattr(config, field) < 0:
                raise InvalidConfig(field, "must not be negative")
        if config.port > 65535:
            raise InvalidConfig("port", "must be at most 65535")
        if config.pool_size > MAX_POOL_SIZE:
            raise InvalidConfig("pool_size", f"must be at most {MAX_POOL_SIZE}")
        tls_mode = config.tls_mode or "prefer"
        if tls_mode not in TLS_MODES:
            raise InvalidConfig("tls_mode", f"must be one of {', '.join(TLS_MODES)}")
        if tls_mode.startswith("verify") and not config.tls_ca_file:
            raise InvalidConfig("tls_ca_file", f"required with tls_mode {tls_mode}")
        if bool(config.tls_cert_file) != bool(config.tls_key_file):
            raise InvalidConfig("tls_cert_file", "tls_cert_file and tls_key_file go together")
        for text, field in ((config.application_name, "application_name"), (config.host, "host")):
            if "\x00" in text or len(text) > 255:
                raise InvalidConfig(field, "must be at most 255 characters, without NUL")

        def path(value: str) -> str:
            return str(self.config_path(value)) if value else ""

        return Settings(
            host=config.host,
            port=config.port or DEFAULT_PORT,
            database=config.database,
            user=credentials["username"],
            password=credentials["password"],
            application_name=config.application_name or "prism",
            connect_timeout=(config.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS) / 1000,
            statement_timeout_ms=config.statement_timeout_ms or DEFAULT_STATEMENT_TIMEOUT_MS,
            require_auth=config.require_auth or "scram-sha-256",
            tls_mode=tls_mode,
            tls_ca_file=path(config.tls_ca_file),
            tls_cert_file=path(config.tls_cert_file),
            tls_key_file=path(config.tls_key_file),
        )

    async def initialize(
        self, config: PostgresConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        settings = self._settings(config, credentials)
        table = parse_table(config.table)
        self.kv_limits = KeyValueLimits.from_config(
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            max_batch=config.max_batch,
        )
        pool = Pool(
            settings,
            config.pool_size or DEFAULT_POOL_SIZE,
            config.prepared_statements or DEFAULT_PREPARED_STATEMENTS,
            self.metrics,
        )
        await pool.open()
        try:
            await self._prepare_tables(pool, table, config.create_table)
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self._kv = KeyValueTable(pool, table)
        self._sql = SqlRunner(pool, config.max_query_rows or DEFAULT_MAX_QUERY_ROWS)
        self._listener = Listener(pool, config.subscriber_buffer or DEFAULT_SUBSCRIBER_BUFFER)
        await self.nursery.start(self._listener.run)
        interval = (config.sweep_interval_ms or DEFAULT_SWEEP_INTERVAL_MS) / 1000
        self.nursery.start_soon(self._sweep_forever, interval)

    async def _prepare_tables(self, pool: Pool, table: Table, create: bool) -> None:
        """Check that the tables exist; create them when missing and configured to. Tables
        that exist are left alone (they may belong to another role)."""
        names = f"{table.quoted},{table.related('_topics')}"
        check = Statement(
            b"SELECT count(to_regclass(t)) FROM unnest(string_to_array($1, ',')) t",
            [(names.encode(), 25, 0)],
        )
        async with pool.connection() as lease:
            (result,) = await lease.run([check])
            if result.error_message:
                raise statement_error(result, "config.table: ")
            if result.get_value(0, 0) == b"2":
                return
            if not create:
                raise FailedPrecondition(
                    f"config.table: {table.display!r} (or {table.display}_topics) does not "
                    "exist: create it (see the plugin's README) or set create_table: true"
                )
            lock = Statement(b"SELECT pg_advisory_xact_lock(%d)" % _DDL_LOCK)
            results = await lease.run([lock, *(Statement(ddl) for ddl in table.ddl())])
            failed = next((r for r in results if r.error_message), None)
            if failed is not None:
                error = statement_error(failed)
                raise FailedPrecondition(
                    f"config.table: cannot create {table.display!r}: {error.message}"
                )

    async def _sweep_forever(self, interval: float) -> None:
        # Expired rows are already invisible to every read; this only reclaims their space.
        while True:
            await trio.sleep(interval)
            try:
                await self.kv.sweep()
            except GrpcError as error:
                # Not worth ending the instance over: the next sweep tries again.
                self.logger.warning("sweeping expired keys failed: %s", error.status.name)

    async def health(self) -> HealthReport:
        pool = self._pool
        if pool is None:
            return HealthReport(HealthStatus.UNHEALTHY, "not connected")
        try:
            async with pool.connection() as lease:
                (result,) = await lease.run([Statement(b"SELECT 1")])
                if result.error_message:
                    raise Unavailable(result.error_message.decode(errors="replace").strip())
        except GrpcError as error:
            return HealthReport(
                HealthStatus.UNHEALTHY,
                f"PostgreSQL unreachable: {error.status.name}: {error.message}",
            )
        details = {
            "server": pool.settings.server,
            "connections": str(pool.open_connections),
            "subscribers": str(self._listener.subscribers if self._listener else 0),
        }
        return HealthReport(details=details)

    def begin_shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close(Unavailable("the plugin is shutting down: subscribe again"))

    async def shutdown(self, grace_seconds: float) -> None:
        if self._pool is not None:
            self._pool.close()

    @property
    def kv(self) -> KeyValueTable:
        if self._kv is None:
            raise Unavailable("the plugin is not connected")
        return self._kv

    @property
    def sql(self) -> SqlRunner:
        if self._sql is None:
            raise Unavailable("the plugin is not connected")
        return self._sql

    # -- key-value (the SDK has checked keys, values, shapes and features) ---------------------

    @operation("get", params=GetRequest, result=GetResponse, features=("etag", "ttl"))
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        return await self.kv.get(params.key)

    @operation("set", params=SetRequest, result=SetResponse, features=("etag", "ttl"))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        written = await self.kv.write(params)
        assert isinstance(written, str)
        return SetResponse(etag=written)

    @operation("delete", params=DeleteRequest, result=DeleteResponse, features=("etag",))
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse(deleted=bool(await self.kv.write(params)))

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        return ExistsResponse(exists=await self.kv.exists(params.key))

    @operation("expire", params=ExpireRequest, result=ExpireResponse)
    async def expire(self, params: ExpireRequest, ctx: OperationContext) -> ExpireResponse:
        ttl = 0 if params.persist else params.ttl_ms
        return ExpireResponse(found=await self.kv.expire(params.key, ttl))

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        limit = min(params.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        keys, truncated = await self.kv.list_keys(params.prefix, params.start_after, limit)
        return ListKeysResponse(keys=keys, truncated=truncated)

    @operation("get_many", params=GetManyRequest, result=GetManyResponse, features=("etag", "ttl"))
    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        return GetManyResponse(items=await self.kv.get_many(params.keys))

    @operation("set_many", params=SetManyRequest, result=SetManyResponse, features=("etag", "ttl"))
    async def set_many(self, params: SetManyRequest, ctx: OperationContext) -> SetManyResponse:
        return SetManyResponse(results=await self.kv.apply_each(params.items))

    @operation(
        "delete_many", params=DeleteManyRequest, result=DeleteManyResponse, features=("etag",)
    )
    async def delete_many(
        self, params: DeleteManyRequest, ctx: OperationContext
    ) -> DeleteManyResponse:
        return DeleteManyResponse(results=await self.kv.apply_each(params.items))

    @operation(
        "transact", params=TransactRequest, result=TransactResponse, features=("etag", "ttl")
    )
    async def transact(self, params: TransactRequest, ctx: OperationContext) -> TransactResponse:
        return TransactResponse(results=await self.kv.apply_all(params.operations))

    # -- publish / subscribe (listen.py) -------------------------------------------------------

    def _topic(self, topic: str) -> str:
        self.kv_limits.check_key(topic, "topic")
        return topic

    @operation("publish", params=PublishRequest, result=PublishResponse)
    async def publish(self, params: PublishRequest, ctx: OperationContext) -> PublishResponse:
        topic = self._topic(params.topic)
        text = envelope(topic, params.payload, params.headers)
        return PublishResponse(sequence=await self.kv.publish(topic, channel(topic), text))

    @stream_operation("subscribe", params=SubscribeRequest, result=Message)
    async def subscribe(self, params: SubscribeRequest, stream: OperationStream) -> None:
        topic = self._topic(params.topic)
        if self._listener is None:
            raise Unavailable("the plugin is not connected")
        async with self._listener.subscribe(topic) as messages:
            async for message in messages:
                await stream.send(message)

    # -- sql (sql.py) --------------------------------------------------------------------------

    @operation(
        "query",
        params=QueryRequest,
        result=QueryResponse,
        features=("bool", "timestamp", "json", "array"),
    )
    async def query(self, params: QueryRequest, ctx: OperationContext) -> QueryResponse:
        result = await self.sql.run(params.sql, params.params)
        return QueryResponse(columns=result.columns, rows=result.rows)

    @operation("execute", params=ExecuteStatementRequest, result=ExecuteStatementResponse)
    async def execute(
        self, params: ExecuteStatementRequest, ctx: OperationContext
    ) -> ExecuteStatementResponse:
        result = await self.sql.run(params.sql, params.params)
        return ExecuteStatementResponse(rows_affected=result.rows_affected)

    @operation(
        "transaction",
        params=TransactionRequest,
        result=TransactionResponse,
        features=("bool", "timestamp", "json", "array"),
    )
    async def transaction(
        self, params: TransactionRequest, ctx: OperationContext
    ) -> TransactionResponse:
        return TransactionResponse(results=await self.sql.transaction(params.statements))
