"""clickhouse: the ``sql`` contract (``query``, ``execute`` with ``batch``) on ClickHouse's HTTP
interface, with httpx on Trio.

Not declared, so refused with UNIMPLEMENTED by the SDK: ``transaction`` (ClickHouse 18 has no
transactions: nothing could make a list of statements all-or-none), and the typed-row features
``query:bool`` (Bool came in 22.x; booleans are UInt8 and come back as int64_value), ``query:json``
(no JSON type in 18.16: JSON is a String) and ``query:timestamp`` (DateTime holds whole seconds;
the contract's timestamps have microseconds). DateTime columns still come back as
timestamp_value. ``query:array`` is declared: Array(T) columns come back as array_value.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence

from prism._proto.prism.data.v1 import (
    Column,
    ExecuteStatementRequest,
    ExecuteStatementResponse,
    QueryRequest,
    QueryResponse,
    Value,
)
from prism.sdk import (
    BackendPlugin,
    GrpcError,
    HealthReport,
    HealthStatus,
    InvalidArgument,
    InvalidConfig,
    KeyValueLimits,
    OperationContext,
    Unavailable,
    operation,
)
from prism_plugin_clickhouse._proto.prism.plugins.clickhouse.v1 import ClickHouseConfig
from prism_plugin_clickhouse.client import HttpSettings, Server
from prism_plugin_clickhouse.statements import rewrite
from prism_plugin_clickhouse.values import encode_rows, parse_result, typed_rows

__all__ = ["ClickHousePlugin"]

DEFAULT_PORT = 8123
DEFAULT_TLS_PORT = 8443
DEFAULT_POOL_SIZE = 4
MAX_POOL_SIZE = 1000
DEFAULT_CONNECT_TIMEOUT_MS = 10_000
DEFAULT_QUERY_TIMEOUT_MS = 30_000
DEFAULT_KEEPALIVE_MS = 2_000
DEFAULT_MAX_QUERY_ROWS = 10_000
DEFAULT_MAX_BATCH_ROWS = 100_000
DEFAULT_MAX_STATEMENT_BYTES = 16_384


class ClickHousePlugin(BackendPlugin):
    name = "clickhouse"
    version = "0.1.0"
    config_type = ClickHouseConfig
    config_required = False  # absent: the required field is named (config.host: required)
    required_credentials = ("username", "password")

    def __init__(self) -> None:
        super().__init__()
        self._server: Server | None = None
        self._zone = "UTC"
        self._server_version = ""
        self._max_statement_bytes = DEFAULT_MAX_STATEMENT_BYTES

    def _settings(self, config: ClickHouseConfig, credentials: Mapping[str, str]) -> HttpSettings:
        if not config.host:
            raise InvalidConfig("host", "required (a host name or an IP address)")
        for field in (
            "port",
            "pool_size",
            "connect_timeout_ms",
            "query_timeout_ms",
            "keepalive_ms",
            "max_query_rows",
            "max_batch_rows",
            "max_statement_bytes",
        ):
            if getattr(config, field) < 0:
                raise InvalidConfig(field, "must not be negative")
        if config.port > 65535:
            raise InvalidConfig("port", "must be at most 65535")
        if config.pool_size > MAX_POOL_SIZE:
            raise InvalidConfig("pool_size", f"must be at most {MAX_POOL_SIZE}")
        for text, field in ((config.host, "host"), (config.client_name, "client_name")):
            if len(text) > 255 or any(c in text for c in "\x00\r\n"):
                raise InvalidConfig(field, "must be at most 255 characters, without NUL or CR/LF")
        if any(c in config.host for c in "/?#@ "):
            raise InvalidConfig("host", "a host name or an IP address, not a URL")
        if config.tls_ca_file and not config.tls:
            raise InvalidConfig("tls_ca_file", "only with tls: true")
        verify: ssl.SSLContext | bool = True
        if config.tls_ca_file:
            verify = ssl.create_default_context(cafile=str(self.config_path(config.tls_ca_file)))
        scheme = "https" if config.tls else "http"
        port = config.port or (DEFAULT_TLS_PORT if config.tls else DEFAULT_PORT)
        host = f"[{config.host}]" if ":" in config.host else config.host
        timeout_ms = config.query_timeout_ms or DEFAULT_QUERY_TIMEOUT_MS
        return HttpSettings(
            base_url=f"{scheme}://{host}:{port}",
            username=credentials["username"],
            password=credentials["password"],
            database=config.database,
            pool_size=config.pool_size or DEFAULT_POOL_SIZE,
            connect_timeout=(config.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS) / 1000,
            keepalive=(config.keepalive_ms or DEFAULT_KEEPALIVE_MS) / 1000,
            query_timeout_s=-(-timeout_ms // 1000),
            max_rows=config.max_query_rows or DEFAULT_MAX_QUERY_ROWS,
            client_name=config.client_name or "prism",
            verify=verify,
        )

    async def initialize(
        self, config: ClickHouseConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        settings = self._settings(config, credentials)
        self.kv_limits = KeyValueLimits.from_config(
            max_batch=config.max_batch_rows or DEFAULT_MAX_BATCH_ROWS
        )
        self._max_statement_bytes = config.max_statement_bytes or DEFAULT_MAX_STATEMENT_BYTES
        server = Server(settings)
        try:
            # Authenticates (a wrong password is UNAUTHENTICATED here, not on the first call)
            # and learns the time zone DateTime columns without one of their own are in.
            body = await server.post(
                "SELECT version(), timezone() FORMAT TabSeparatedWithNamesAndTypes"
            )
            _, data = parse_result(body)
            version, zone = data[0]
            assert isinstance(version, bytes)
            assert isinstance(zone, bytes)
            self._server_version, self._zone = version.decode(), zone.decode()
        except BaseException:
            await server.aclose()
            raise
        self._server = server

    async def health(self) -> HealthReport:
        server = self._server
        if server is None:
            return HealthReport(HealthStatus.UNHEALTHY, "not connected")
        try:
            await server.post("SELECT 1")
        except GrpcError as error:
            return HealthReport(
                HealthStatus.UNHEALTHY, f"ClickHouse unreachable: {error.status.name}"
            )
        return HealthReport(
            details={"server": server.settings.base_url, "version": self._server_version}
        )

    async def shutdown(self, grace_seconds: float) -> None:
        if self._server is not None:
            await self._server.aclose()

    @property
    def server(self) -> Server:
        if self._server is None:
            raise Unavailable("the plugin is not connected")
        return self._server

    async def _run(
        self, sql: str, rows: Sequence[Sequence[Value]], *, result_rows: bool
    ) -> tuple[bytes, int | None]:
        """Run the statement for every parameter set in ``rows``; its answer, and the rows an
        INSERT ... VALUES wrote (None for other statements)."""
        if not sql.strip():
            raise InvalidArgument("sql must not be empty")
        if len(sql.encode()) > self._max_statement_bytes:
            raise InvalidArgument(
                f"the statement is over the limit of {self._max_statement_bytes} bytes "
                "(config.max_statement_bytes)"
            )
        statement = rewrite(sql.strip().rstrip(";").rstrip())
        if len(rows) > 1 and (statement.tuples is None or not statement.count):
            raise InvalidArgument("a batch needs an INSERT ... VALUES statement with parameters")
        inserted = None if statement.tuples is None else statement.tuples * max(len(rows), 1)
        text = statement.sql + (" FORMAT TabSeparatedWithNamesAndTypes" if result_rows else "")
        if not statement.count:
            if any(rows):
                raise InvalidArgument(
                    f"the statement has no parameters, {max(len(r) for r in rows)} given"
                )
            return await self.server.post(text, result_rows=result_rows), inserted
        structure, data = encode_rows(rows, statement.count)
        return await self.server.post(
            text, structure=structure, data=data, result_rows=result_rows
        ), inserted

    @operation("query", params=QueryRequest, result=QueryResponse, features=("array",))
    async def query(self, params: QueryRequest, ctx: OperationContext) -> QueryResponse:
        body, _ = await self._run(params.sql, [params.params], result_rows=True)
        if not body.strip():  # a statement that returns no rows (DDL, INSERT)
            return QueryResponse()
        columns, data = parse_result(body)
        return QueryResponse(
            columns=[Column(name=name, type=type_name) for name, type_name in columns],
            rows=typed_rows(columns, data, self._zone),
        )

    @operation(
        "execute",
        params=ExecuteStatementRequest,
        result=ExecuteStatementResponse,
        features=("batch",),
    )
    async def execute(
        self, params: ExecuteStatementRequest, ctx: OperationContext
    ) -> ExecuteStatementResponse:
        rows: list[Sequence[Value]] = (
            [row.values for row in params.batch] if params.batch else [params.params]
        )
        _, inserted = await self._run(params.sql, rows, result_rows=False)
        return ExecuteStatementResponse(rows_affected=inserted or 0)
