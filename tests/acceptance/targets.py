"""The plugins the acceptance suites run against ("targets"), and how each is configured,
hosted and inspected. Add a plugin here (see docs/acceptance.md): its capabilities come from
its class (``supported_operations``), so the suites it gets follow from what it declares.
"""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import MODES, Inspector, SqlDialect, SqlInspector
from prism_acceptance_plugins import (
    BrokenBasic,
    BrokenBulk,
    BrokenEtag,
    BrokenList,
    BrokenLog,
    BrokenPubsub,
    BrokenSql,
    BrokenTransact,
    BrokenTtl,
)
from prism_plugin_asyncio_kv.service import FEATURES, STREAM_OPERATIONS, UNARY_OPERATIONS
from prism_plugin_clickhouse import ClickHousePlugin
from prism_plugin_kafka import KafkaPlugin
from prism_plugin_memcached import MemcachedPlugin
from prism_plugin_memstore import MemstorePlugin
from prism_plugin_nats import NatsPlugin
from prism_plugin_objectstore import ObjectStorePlugin
from prism_plugin_postgres import PostgresPlugin
from prism_plugin_redis import RedisPlugin
from prism_plugin_sqlite import SqlitePlugin

from prism._proto.prism.data.v1 import ListObjectsRequest, ProduceRequest, QueryRequest, Value
from prism.sdk import BackendPlugin
from prism.sdk.keyvalue import KeyValueLimits

if TYPE_CHECKING:
    from conftest import Env

    from prism.sdk.testing import PluginHarness


@dataclass(frozen=True)
class AuthSetup:
    """What the authentication suite needs from a target whose backend authenticates."""

    #: The namespace config with a pool of ``pool_size`` connections named ``client_name``.
    config: Callable[[Env, int, str], dict[str, Any]]
    #: One call that needs the backend (key-value: a set then a get of ``key``); None = that.
    round_trip: Callable[[PluginHarness, str], Awaitable[None]] | None = None
    #: The backend closes a revoked user's connections a moment after the change is made
    #: (NATS: on the config reload), so a running instance's calls fail UNAVAILABLE, or
    #: DEADLINE_EXCEEDED, until it sees the refusal: then UNAUTHENTICATED. Never a success.
    revocation_settles: bool = False
    #: Connections the plugin opens for a pool of N: N, or 1 (one multiplexed connection).
    single_connection: bool = False
    #: The credential names the plugin takes: the user's name (or key id), then its secret.
    credential_keys: tuple[str, str] = ("username", "password")
    #: The backend can say which user each connection authenticated as. False for S3, which
    #: authenticates every request by its signature and has no authenticated connections: the
    #: checks of the server's view are then left out (every request is signed, so every
    #: pooled connection's requests are).
    server_sees_connections: bool = True


@dataclass(frozen=True)
class Target:
    name: str
    plugin: str  # what the proxy's config names: an entry point, or module:Class
    factory: Callable[[], BackendPlugin] | None  # direct mode (None: not an SDK plugin)
    backend: str | None = None  # a backends.BACKENDS kind, started for this target
    modes: tuple[str, ...] = MODES
    config: Callable[[Env], dict[str, Any]] = lambda env: {}
    credentials: Callable[[Env], dict[str, str]] = lambda env: {}
    inspector: Callable[[Env], Inspector | None] = lambda env: None
    sql_inspector: Callable[[Env], SqlInspector | None] = lambda env: None
    sql_dialect: SqlDialect | None = None
    limits: KeyValueLimits = field(default_factory=KeyValueLimits)
    auth: AuthSetup | None = None
    #: Framework self-test (a broken plugin): only the negative proof runs it, never the table.
    broken: tuple[str, ...] = ()  # the checks it must fail
    #: A plugin not built on the SDK: what it declares in InitializeResponse, and its command.
    declared: tuple[str, ...] = ()
    plugin_command: tuple[str, ...] | None = None
    note: str = ""

    @property
    def capabilities(self) -> frozenset[str]:
        plugin = self.factory
        if plugin is None:
            return frozenset(self.declared)
        cls = plugin if isinstance(plugin, type) else type(plugin())
        return frozenset(cls.supported_operations)

    def matches(self, names: set[str]) -> bool:
        return self.name in names or (self.backend is not None and self.backend in names)


# -- inspectors: the backend through its own client -------------------------------------------


class SqliteFile:
    """The sqlite plugin's database file read with the standard library's sqlite3."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db:
            return db.execute(sql, args).fetchall()

    def value(self, key: str) -> bytes | None:
        now = int(time.time() * 1000)
        rows = self._query(
            "SELECT value FROM prism_kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            key,
            now,
        )
        return bytes(rows[0][0]) if rows else None

    def ttl_ms(self, key: str) -> int | None:
        rows = self._query("SELECT expires_at FROM prism_kv WHERE key = ?", key)
        if not rows or rows[0][0] is None:
            return None
        return int(rows[0][0]) - int(time.time() * 1000)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self._query(sql)


class RedisKeys:
    """The redis plugin's keys as redis-py sees them: ``key_prefix + key``, a string holding a
    version byte, the 8-byte etag, then the value (plugins/redis/README.md)."""

    def __init__(self, client: Any, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix

    def value(self, key: str) -> bytes | None:
        stored = self.client.get(self.prefix + key)
        if stored is None:
            return None
        assert stored[:1] == b"\x01", f"{key!r}: not the plugin's layout: {stored[:16]!r}"
        return bytes(stored[9:])

    def ttl_ms(self, key: str) -> int | None:
        ttl = self.client.pttl(self.prefix + key)
        return None if ttl < 0 else int(ttl)


class MemcachedKeys:
    """The memcached plugin's items read with pymemcache's ``raw_command`` and the meta
    protocol: the plugin stores ``key_prefix + key`` under exactly its UTF-8 bytes (base64 on
    the wire, flag ``b``, when it holds a space or a control character), the value as it is."""

    def __init__(self, client: Any, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix.encode()

    def _meta(self, key: str, flags: bytes) -> bytes:
        raw = self.prefix + key.encode()
        unsafe = any(b <= 0x20 or b == 0x7F for b in raw)
        token = base64.b64encode(raw) + b" b" if unsafe else raw
        # "mn" ends the reply, so raw_command knows where to stop whatever the value holds.
        reply: bytes = self.client.raw_command(b"mg " + token + b" " + flags + b"\r\nmn", b"MN\r\n")
        return reply

    def value(self, key: str) -> bytes | None:
        reply = self._meta(key, b"v")
        if reply.startswith(b"EN"):
            return None
        header, _, rest = reply.partition(b"\r\n")
        size = int(header.split()[1])
        assert rest[size:] == b"\r\n", f"{key!r}: the reply is not one value: {reply[:64]!r}"
        return rest[:size]

    def ttl_ms(self, key: str) -> int | None:
        reply = self._meta(key, b"t")
        if reply.startswith(b"EN"):
            return None
        ttl = int(next(t for t in reply.split() if t.startswith(b"t"))[1:])
        return None if ttl < 0 else ttl * 1000


class PostgresTable:
    """The postgres plugin's table (and any SQL) read with psycopg, as the superuser, in the
    test database; one connection per session, opened on first use."""

    TABLE = "prism_kv"

    def __init__(self, env: Env) -> None:
        self.env = env
        self._connection: Any = None

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self._connection is None or self._connection.closed:
            self._connection = self.env.backend("postgres").client()  # type: ignore[attr-defined]
        rows: list[tuple[Any, ...]] = self._connection.execute(sql, args).fetchall()
        return rows

    def value(self, key: str) -> bytes | None:
        rows = self._query(
            f"SELECT value FROM {self.TABLE} WHERE key = %s "
            "AND (expires_at IS NULL OR expires_at > now())",
            key.encode(),  # keys are their UTF-8 bytes (bytea: text cannot hold NUL)
        )
        return bytes(rows[0][0]) if rows else None

    def ttl_ms(self, key: str) -> int | None:
        rows = self._query(
            "SELECT ceil(extract(epoch FROM expires_at - now()) * 1000)::int8 "
            f"FROM {self.TABLE} WHERE key = %s AND expires_at IS NOT NULL",
            key.encode(),
        )
        return int(rows[0][0]) if rows else None

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self._query(sql)


_POSTGRES_INSPECTORS: dict[int, PostgresTable] = {}


def _postgres_table(env: Env) -> PostgresTable:
    return _POSTGRES_INSPECTORS.setdefault(id(env), PostgresTable(env))


def _postgres_config(env: Env, pool_size: int = 2, client_name: str = "") -> dict[str, Any]:
    connection: Mapping[str, Any] = env.backend("postgres").connection
    return {
        "host": connection["host"],
        "port": connection["port"],
        "database": connection["database"],
        # The authentication suite's users each get a table of their own: a table belongs to
        # the role that created it.
        "table": f"kv_{client_name.replace('-', '_')}" if client_name else PostgresTable.TABLE,
        "create_table": True,
        "pool_size": pool_size,
        "application_name": client_name or "prism-acceptance",
    }


def _sqlite_path(env: Env) -> Path:
    return env.directory / "sqlite-target.db"


REDIS_PREFIX = "acc:"
MEMCACHED_PREFIX = "acc:"


def _memcached_config(env: Env) -> dict[str, Any]:
    connection: Mapping[str, Any] = env.backend("memcached").connection
    return {"host": connection["host"], "port": connection["port"], "key_prefix": MEMCACHED_PREFIX}


def _redis_config(env: Env, pool_size: int = 2, client_name: str = "") -> dict[str, Any]:
    connection: Mapping[str, Any] = env.backend("redis").connection
    return {
        "host": connection["host"],
        "port": connection["port"],
        "pool_size": pool_size,
        "client_name": client_name or "prism-acceptance",
        "key_prefix": REDIS_PREFIX,
    }


def _nats_config(env: Env, pool_size: int = 1, client_name: str = "") -> dict[str, Any]:
    """pool_size: nats-py multiplexes everything on one connection, so the plugin has one."""
    connection: Mapping[str, Any] = env.backend("nats").connection
    return {
        "host": connection["host"],
        "port": connection["port"],
        "client_name": client_name or "prism-acceptance",
        # A record handed to a member that holds it through a busy machine's pause must not
        # be redelivered to another mid-test ("none is delivered to two").
        "ack_wait_ms": 120_000,
        "fetch_wait_ms": 500,
    }


async def _nats_round_trip(h: PluginHarness, key: str) -> None:
    produced = await h.execute("produce", ProduceRequest(topic=key, value=b"authenticated"))
    assert produced.offset > 0  # type: ignore[union-attr]


# -- ClickHouse -------------------------------------------------------------------------------


def _clickhouse_config(env: Env, pool_size: int = 2, client_name: str = "") -> dict[str, Any]:
    connection: Mapping[str, Any] = env.backend("clickhouse").connection
    return {
        "host": connection["host"],
        "port": connection["port"],
        "pool_size": pool_size,
        "client_name": client_name or "prism-acceptance",
    }


async def _clickhouse_round_trip(h: PluginHarness, key: str) -> None:
    answer = await h.execute(
        "query", QueryRequest(sql="SELECT $1 AS k", params=[Value(string_value=key)])
    )
    assert answer.rows[0].values[0].string_value == key  # type: ignore[union-attr]


CLICKHOUSE_DIALECT = SqlDialect(
    integer="Nullable(Int64)",
    real="Nullable(Float64)",
    text="Nullable(String)",
    blob="Nullable(String)",
    boolean="UInt8",
    timestamp="DateTime('UTC')",
    json="String",
    int_array="Array(Int64)",
    primary_key="",
    table_options=" ENGINE = Memory",
    unique_keys=False,
    row_updates=False,
)


def _objectstore_config(env: Env, pool_size: int = 4, client_name: str = "") -> dict[str, Any]:
    """The object suite reasons about these sizes (suites/object.py: CHUNK, PART)."""
    connection: Mapping[str, Any] = env.backend("seaweedfs").connection
    return {
        "endpoint": connection["endpoint"],
        "bucket": connection["bucket"],
        "chunk_size": 64 * 1024,
        "part_size": 5 << 20,
        "max_connections": pool_size,
    }


async def _objectstore_round_trip(h: PluginHarness, key: str) -> None:
    listed = await h.execute("list_objects", ListObjectsRequest(prefix=key))
    assert listed.next_page_token == ""  # type: ignore[union-attr]


# -- kafka (Tansu) ------------------------------------------------------------------------------


def _kafka_config(env: Env) -> dict[str, Any]:
    connection: Mapping[str, Any] = env.backend("kafka").connection
    return {
        "bootstrap_servers": [f"{connection['host']}:{connection['port']}"],
        "client_id": "prism-acceptance",
        "anonymous": True,  # Tansu offers no SASL/PLAIN (backends.TansuBroker)
        # Several partitions, so a group's three members each get some (the log suite).
        "partitions": 4,
        "fetch_wait_ms": 200,
    }


TARGETS: tuple[Target, ...] = (
    Target("memstore", "memstore", MemstorePlugin, note="no backend: the plugin is the store"),
    Target(
        "asyncio_kv",
        "asyncio_kv",
        None,
        modes=("sidecar",),
        declared=(*UNARY_OPERATIONS, *STREAM_OPERATIONS, *FEATURES),
        plugin_command=("python", "-m", "prism_plugin_asyncio_kv"),
        note="not an SDK plugin (asyncio + grpclib): sidecar only, capabilities as it declares",
    ),
    Target(
        "sqlite",
        "sqlite",
        SqlitePlugin,
        backend=None,
        config=lambda env: {"path": str(_sqlite_path(env))},
        inspector=lambda env: SqliteFile(_sqlite_path(env)),
        sql_inspector=lambda env: SqliteFile(_sqlite_path(env)),
        sql_dialect=SqlDialect(),
        note="effects checked in the database file with sqlite3",
    ),
    Target(
        "postgres",
        "postgres",
        PostgresPlugin,
        backend="postgres",
        config=_postgres_config,
        credentials=lambda env: env.backend("postgres").credentials.as_map(),
        inspector=_postgres_table,
        sql_inspector=_postgres_table,
        sql_dialect=SqlDialect(
            integer="BIGINT",
            real="DOUBLE PRECISION",
            blob="BYTEA",
            timestamp="TIMESTAMPTZ",
            json="JSONB",
            int_array="BIGINT[]",
        ),
        auth=AuthSetup(_postgres_config),
        note="PostgreSQL 15: effects checked in its table with psycopg",
    ),
    Target(
        "redis",
        "redis",
        RedisPlugin,
        backend="redis",
        config=_redis_config,
        credentials=lambda env: env.backend("redis").credentials.as_map(),
        inspector=lambda env: RedisKeys(env.backend("redis").client(), REDIS_PREFIX),
        auth=AuthSetup(_redis_config),
        note="Redis 7 with an ACL user; effects checked with redis-py",
    ),
    Target(
        "memcached",
        "memcached",
        MemcachedPlugin,
        backend="memcached",
        config=_memcached_config,
        inspector=lambda env: MemcachedKeys(env.backend("memcached").client(), MEMCACHED_PREFIX),
        limits=KeyValueLimits(
            max_key_bytes=250 - len(MEMCACHED_PREFIX), max_value_bytes=(1 << 20) - 1024
        ),
        note="memcached 1.6 (meta protocol); effects checked with pymemcache",
    ),
    Target(
        "nats",
        "nats",
        NatsPlugin,
        backend="nats",
        config=_nats_config,
        credentials=lambda env: env.backend("nats").credentials.as_map(),
        auth=AuthSetup(
            _nats_config,
            round_trip=_nats_round_trip,
            revocation_settles=True,
            single_connection=True,
        ),
        note="NATS 2.9 with JetStream and a user/password; nats-py on an asyncio thread",
    ),
    Target(
        "clickhouse",
        "clickhouse",
        ClickHousePlugin,
        backend="clickhouse",
        config=_clickhouse_config,
        credentials=lambda env: env.backend("clickhouse").credentials.as_map(),
        sql_inspector=lambda env: env.backend("clickhouse"),  # type: ignore[arg-type,return-value]
        sql_dialect=CLICKHOUSE_DIALECT,
        auth=AuthSetup(_clickhouse_config, round_trip=_clickhouse_round_trip),
        note="ClickHouse 18.16 over HTTP with a user/password; effects checked over its HTTP "
        "interface (no unique keys, no UPDATE: those checks do not apply)",
    ),
    Target(
        "objectstore",
        "objectstore",
        ObjectStorePlugin,
        backend="seaweedfs",
        config=_objectstore_config,
        credentials=lambda env: env.backend("seaweedfs").credentials.as_map(),
        inspector=lambda env: env.backend("seaweedfs").client(),  # type: ignore[attr-defined]
        auth=AuthSetup(
            _objectstore_config,
            round_trip=_objectstore_round_trip,
            credential_keys=("access_key_id", "secret_access_key"),
            server_sees_connections=False,
        ),
        note="SeaweedFS 4.48 (S3 API, SigV4 access keys); objects checked through S3 as admin",
    ),
    Target(
        "kafka",
        "kafka",
        KafkaPlugin,
        backend="kafka",
        config=_kafka_config,
        note="Tansu 0.6 (Kafka protocol, in memory, no SASL): aiokafka on an asyncio thread",
    ),
)


def _broken(cls: type[BackendPlugin], *fails: str, sqlite: bool = False) -> Target:
    return Target(
        cls.name,
        f"prism_acceptance_plugins:{cls.__name__}",
        cls,
        modes=("direct",),
        config=(lambda env: {"path": str(env.directory / f"{cls.name}.db")})
        if sqlite
        else (lambda env: {}),
        inspector=(lambda env: SqliteFile(env.directory / f"{cls.name}.db"))
        if sqlite
        else (lambda env: None),
        sql_inspector=(lambda env: SqliteFile(env.directory / f"{cls.name}.db"))
        if sqlite
        else (lambda env: None),
        sql_dialect=SqlDialect() if sqlite else None,
        broken=fails,
    )


BROKEN: tuple[Target, ...] = (
    _broken(BrokenBasic, "delete_reports_whether_a_live_key_was_removed"),
    _broken(BrokenEtag, "set_if_match_mismatch_is_aborted_and_writes_nothing"),
    _broken(BrokenBulk, "get_many_answers_in_request_order"),
    _broken(BrokenTransact, "a_failed_condition_aborts_the_whole_transaction"),
    _broken(BrokenTtl, "a_key_with_a_long_ttl_reports_it"),
    _broken(BrokenList, "pages_follow_start_after_until_not_truncated"),
    _broken(BrokenPubsub, "a_subscriber_gets_every_message_in_order"),
    _broken(BrokenLog, "unacknowledged_records_are_delivered_again_after_a_restart"),
    _broken(BrokenSql, "a_failing_statement_rolls_back_the_whole_transaction", sqlite=True),
)
