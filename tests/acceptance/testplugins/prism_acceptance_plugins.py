"""Plugins that exist to test the acceptance framework itself (never shipped):

- ``RedisAuthProbe``: a small key-value plugin (kv.basic) on a real Redis with a pool of
  connections that each authenticate — what the reusable authentication suite needs to run
  before the real Redis plugin exists, and a real networked backend for kv.basic with checks
  through redis-py on the server side.
- ``Broken*``: plugins that advertise a contract and break it in one way each. The negative
  checks (``test_negative_proof.py``) run the contract suites against them and require them to
  fail: a suite that passes a broken plugin proves nothing.

Imported by module path (``prism_acceptance_plugins:RedisAuthProbe``), by the proxy's
sidecar runner too: ``conftest.py`` puts this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import betterproto2
import trio
from prism_plugin_memstore import MemstorePlugin
from prism_plugin_sqlite import SqlitePlugin

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    SetRequest,
    SetResponse,
    StatementResult,
    SubscribeRequest,
    TransactionRequest,
    TransactionResponse,
    TransactRequest,
    TransactResponse,
)
from prism.sdk import (
    BackendPlugin,
    InvalidArgument,
    OperationContext,
    OperationStream,
    Unauthenticated,
    Unavailable,
    operation,
)

T = TypeVar("T")

# What a generated package's message_pool.py holds (see tests/sdk/sdk_plugins.py).
default_message_pool = betterproto2.MessagePool()


@dataclass(eq=False, repr=False)
class RedisProbeConfig(betterproto2.Message):
    host: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    port: int = betterproto2.field(2, betterproto2.TYPE_INT32)
    pool_size: int = betterproto2.field(3, betterproto2.TYPE_INT32)
    # The name every pooled connection gives itself (CLIENT SETNAME), so the server can be
    # asked which user each one authenticated as.
    client_name: str = betterproto2.field(4, betterproto2.TYPE_STRING)


default_message_pool.register_message("prism.acceptance.v1", "RedisProbeConfig", RedisProbeConfig)


class RedisAuthProbe(BackendPlugin):
    """get/set/delete/exists on Redis through redis-py (sync, in worker threads) with a
    blocking pool of ``pool_size`` connections, all opened — and authenticated — at Initialize.
    Errors map as a real plugin's must: wrong or missing credentials, a disabled user →
    UNAUTHENTICATED; server unreachable → UNAVAILABLE."""

    name = "redis-authprobe"
    config_type = RedisProbeConfig
    required_credentials = ("username", "password")

    def __init__(self) -> None:
        super().__init__()
        self._pool: Any = None
        self._limiter = trio.CapacityLimiter(1)

    async def initialize(
        self, config: RedisProbeConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        import redis

        size = config.pool_size or 1
        if size < 0:
            raise InvalidArgument("config field 'pool_size' must not be negative")
        self._limiter = trio.CapacityLimiter(size)
        self._pool = redis.BlockingConnectionPool(
            host=config.host,
            port=config.port,
            username=credentials["username"],
            password=credentials["password"],
            client_name=config.client_name or None,
            max_connections=size,
            timeout=30,
        )
        # Open (and so authenticate) every connection now: a bad credential fails Initialize.
        connections = []
        try:
            for _ in range(size):
                connection = await self._blocking(self._pool.get_connection)
                connections.append(connection)
                await self._blocking(connection.connect)
        finally:
            for connection in connections:
                self._pool.release(connection)
        self.metrics.connections_active = size

    async def _blocking(self, call: Callable[[], T]) -> T:
        import redis

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except redis.AuthenticationError:
            raise Unauthenticated("Redis rejected the credentials") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise Unauthenticated("Redis rejected the credentials") from None
            raise
        except redis.ConnectionError:
            raise Unavailable("Redis cannot be reached") from None

    async def _redis(self, command: str, *args: Any) -> Any:
        import redis

        client = redis.Redis(connection_pool=self._pool)
        return await self._blocking(functools.partial(client.execute_command, command, *args))

    async def shutdown(self, grace_seconds: float) -> None:
        if self._pool is not None:
            await trio.to_thread.run_sync(self._pool.disconnect)
        self.metrics.connections_active = 0

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        value = await self._redis("GET", params.key)
        return GetResponse(found=False) if value is None else GetResponse(found=True, value=value)

    @operation("set", params=SetRequest, result=SetResponse)
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        await self._redis("SET", params.key, params.value)
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse(deleted=bool(await self._redis("DEL", params.key)))

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        return ExistsResponse(exists=bool(await self._redis("EXISTS", params.key)))


# -- deliberately broken plugins (each advertises a contract and breaks it) --------------------


class BrokenBasic(MemstorePlugin):
    """kv.basic: delete claims to have deleted keys that never existed."""

    name = "broken-basic"

    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        await super().delete(params, ctx)
        return DeleteResponse(deleted=True)


class BrokenEtag(MemstorePlugin):
    """kv.etag: set ignores if_match and if_absent (last write wins)."""

    name = "broken-etag"

    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        unconditional = SetRequest(key=params.key, value=params.value, ttl_ms=params.ttl_ms)
        return await super().set(unconditional, ctx)


class BrokenBulk(MemstorePlugin):
    """kv.bulk: get_many answers in key order instead of request order."""

    name = "broken-bulk"

    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        return await super().get_many(GetManyRequest(keys=sorted(params.keys)), ctx)


class BrokenTransact(MemstorePlugin):
    """kv.transact: applies operations one by one and stops at a failed condition, keeping the
    earlier ones (not atomic)."""

    name = "broken-transact"

    async def transact(self, params: TransactRequest, ctx: OperationContext) -> TransactResponse:
        for op in params.operations:
            await super().transact(TransactRequest(operations=[op]), ctx)
        return TransactResponse()


class BrokenTtl(MemstorePlugin):
    """kv.ttl: set ignores ttl_ms (keys never expire)."""

    name = "broken-ttl"

    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        forever = SetRequest(
            key=params.key, value=params.value, if_match=params.if_match, if_absent=params.if_absent
        )
        return await super().set(forever, ctx)


class BrokenList(MemstorePlugin):
    """kv.list: ignores start_after (every page is the first page)."""

    name = "broken-list"

    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        return await super().list_keys(
            ListKeysRequest(prefix=params.prefix, limit=params.limit), ctx
        )


class BrokenPubsub(MemstorePlugin):
    """pubsub: delivers every other message."""

    name = "broken-pubsub"

    async def subscribe(self, params: SubscribeRequest, stream: OperationStream) -> None:
        with self._broker.subscribe(params.topic) as subscription:
            count = 0
            async for message in subscription.inbox:
                count += 1
                if count % 2:
                    await stream.send(message)


class BrokenSql(SqlitePlugin):
    """sql: a transaction runs its statements one by one in autocommit mode, so a failing
    statement leaves the earlier ones applied."""

    name = "broken-sql"

    async def transaction(
        self, params: TransactionRequest, ctx: OperationContext
    ) -> TransactionResponse:
        results: list[StatementResult] = []
        for statement in params.statements:
            result = await self._run(
                functools.partial(self.sql.run, statement.sql, statement.params)
            )
            results.append(result)
        return TransactionResponse(results=results)


class UnderDeclared(MemstorePlugin):
    """Serves if_match and if_absent but does not advertise set:etag — what a plugin not built
    on the SDK (which refuses undeclared features itself) could do."""

    name = "under-declared"


UnderDeclared.supported_operations = tuple(
    c for c in UnderDeclared.supported_operations if c != "set:etag"
)
