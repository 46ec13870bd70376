"""Plugins that exist to test the acceptance framework itself (never shipped): ``Broken*``
advertise a contract and break it in one way each. The negative checks
(``test_negative_proof.py``) run the contract suites against them and require them to fail: a
suite that passes a broken plugin proves nothing.

Imported by module path (``prism_acceptance_plugins:BrokenBasic``), by the proxy's sidecar
runner too: ``conftest.py`` puts this directory on ``PYTHONPATH``. (The Redis authentication
probe that ran the auth suite before ``plugins/redis`` existed is gone: the real plugin runs it.)
"""

from __future__ import annotations

import functools

from prism_plugin_memstore import MemstorePlugin
from prism_plugin_memstore.log import Consumer
from prism_plugin_sqlite import SqlitePlugin

from prism._proto.prism.data.v1 import (
    ConsumeRequest,
    DeleteRequest,
    DeleteResponse,
    GetManyRequest,
    GetManyResponse,
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
    OperationContext,
    OperationStream,
)

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
            while (message := await subscription.next()) is not None:
                count += 1
                if count % 2:
                    await stream.send(message)


class _LosesAcks(Consumer):
    async def _acknowledge(self, stream: OperationStream) -> None:
        async for _ in stream:
            pass  # accepted, never applied: the records stay this stream's, handed back at its end


class BrokenLog(MemstorePlugin):
    """log: acknowledgements are accepted and never applied, so a consumer that restarts gets
    what it acknowledged again."""

    name = "broken-log"

    async def consume(self, params: ConsumeRequest, stream: OperationStream) -> None:
        topic = self._log.topic(params.topic)
        await _LosesAcks(self._log, topic, topic.group(params.group), 100).run(stream)


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
