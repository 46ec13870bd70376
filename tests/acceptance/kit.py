"""The acceptance framework's core: how a check talks to a plugin (``Client``: directly, or
through the proxy's front door), what it is given (``Ctx``), and the registry of checks.

A **check** is an ``async def check(ctx: Ctx) -> None`` registered under a contract with
``@check("kv.etag")``; it fails by raising (``AssertionError``, or an unexpected
``GrpcError``). The same check runs against every target (plugin) whose capabilities include
the contract — and every extra capability the check ``needs`` — in each of the target's modes:
``direct`` (the SDK's ``PluginHarness``, the RFC's messages serialized both ways), ``in_process``
and ``sidecar`` (a real proxy, a real front door, over TCP).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import betterproto2
import trio

import prism._proto.prism.data.v1 as data
from prism import grpc as pg
from prism._proto.prism.proxy.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
)
from prism.grpc.wire.status import GrpcError, Status
from prism.sdk.contracts import claimed
from prism.sdk.keyvalue import KeyValueLimits
from prism.sdk.testing import PluginHarness
from prism.sdk.typed import pack, unpack

if TYPE_CHECKING:
    from targets import Target

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"

#: The result type of each data-model operation (what a client unpacks).
RESULTS: dict[str, type[betterproto2.Message]] = {
    "get": data.GetResponse,
    "set": data.SetResponse,
    "delete": data.DeleteResponse,
    "exists": data.ExistsResponse,
    "expire": data.ExpireResponse,
    "list_keys": data.ListKeysResponse,
    "get_many": data.GetManyResponse,
    "set_many": data.SetManyResponse,
    "delete_many": data.DeleteManyResponse,
    "transact": data.TransactResponse,
    "publish": data.PublishResponse,
    "produce": data.ProduceResponse,
    "query": data.QueryResponse,
    "execute": data.ExecuteStatementResponse,
    "transaction": data.TransactionResponse,
    "head_object": data.ObjectInfo,
    "list_objects": data.ListObjectsResponse,
    "delete_object": data.DeleteObjectResponse,
}
#: The typed results of stream operations (raw results come as bytes, whatever the operation).
STREAM_RESULTS: dict[str, type[betterproto2.Message]] = {
    "subscribe": data.Message,
    "consume": data.LogRecord,
    "put_object": data.PutObjectResponse,
    "get_object": data.GetObjectHeader,  # never typed: its results are raw bytes
}

MODES = ("direct", "in_process", "sidecar")


# -- clients ----------------------------------------------------------------------------------


class Subscription(Protocol):
    async def receive(self) -> Any:
        """The next result; None once the stream ended; raises the stream's error."""
        ...

    async def send(self, request: Any) -> None:
        """A further request on the stream (a consume stream's ``ConsumeAck``; raw bytes: a
        put's next chunk)."""
        ...

    async def end(self) -> None:
        """Half-close: the client sends nothing more."""
        ...


class Client(Protocol):
    mode: str

    async def call(self, operation: str, params: betterproto2.Message) -> Any:
        """The operation's typed result, or its ``GrpcError``."""
        ...

    def stream(
        self, operation: str, params: betterproto2.Message
    ) -> AbstractAsyncContextManager[Subscription]: ...


class HarnessClient:
    """``direct`` mode: the SDK's harness, the RFC's messages serialized both ways."""

    mode = "direct"

    def __init__(self, harness: PluginHarness) -> None:
        self.harness = harness

    async def call(self, operation: str, params: betterproto2.Message) -> Any:
        return await self.harness.execute(operation, params)

    @asynccontextmanager
    async def stream(
        self, operation: str, params: betterproto2.Message
    ) -> AsyncIterator[Subscription]:
        async with self.harness.stream(operation, params) as stream:
            yield stream


class _ProxyStream:
    def __init__(self, call: pg.ClientCall, result: type[betterproto2.Message]) -> None:
        self._call = call
        self._result = result

    async def receive(self) -> Any:
        while True:
            response: StreamResponse | None = await self._call.receive_message()
            if response is None:
                return None
            if response.is_final:
                continue
            if response.raw_result is not None:
                return response.raw_result
            return unpack(response.typed_result, self._result)

    async def send(self, request: betterproto2.Message | bytes) -> None:
        if isinstance(request, bytes):
            await self._call.send_message(StreamRequest(raw_params=request))
        else:
            await self._call.send_message(StreamRequest(typed_params=pack(request)))

    async def end(self) -> None:
        await self._call.end()


class ProxyClient:
    """``in_process`` / ``sidecar`` mode: the proxy's front door over TCP."""

    def __init__(self, channel: pg.Channel, namespace: str, mode: str) -> None:
        self.channel = channel
        self.namespace = namespace
        self.mode = mode

    async def call(self, operation: str, params: betterproto2.Message) -> Any:
        request = ExecuteRequest(
            namespace=self.namespace, operation=operation, typed_params=pack(params)
        )
        response: ExecuteResponse = await self.channel.unary_unary(
            EXECUTE, request, ExecuteResponse
        )
        return unpack(response.typed_result, RESULTS[operation])

    @asynccontextmanager
    async def stream(
        self, operation: str, params: betterproto2.Message
    ) -> AsyncIterator[Subscription]:
        async with self.channel.stream(EXECUTE_STREAM, StreamResponse) as call:
            await call.send_message(
                StreamRequest(
                    namespace=self.namespace, operation=operation, typed_params=pack(params)
                )
            )
            yield _ProxyStream(call, STREAM_RESULTS[operation])


# -- what a check gets ------------------------------------------------------------------------


class Inspector(Protocol):
    """The backend seen through its own client (sqlite3, redis-py, psycopg, pymemcache), never
    through the plugin. Synchronous; ``Ctx`` runs it in a worker thread."""

    def value(self, key: str) -> bytes | None:
        """The live value the plugin stored under ``key``, or None."""
        ...

    def ttl_ms(self, key: str) -> int | None:
        """The remaining time to live of ``key`` in the backend (None: none, or no key)."""
        ...


class SqlInspector(Protocol):
    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql`` run by the backend's own client (no parameters: checks build literal SQL)."""
        ...


@dataclass(frozen=True)
class SqlDialect:
    """What differs between SQL backends in the checks' own statements (parameters are $n in
    every backend, per the contract)."""

    integer: str = "INTEGER"
    real: str = "REAL"
    text: str = "TEXT"
    blob: str = "BLOB"
    boolean: str = "BOOLEAN"
    timestamp: str = "TIMESTAMP"
    json: str = "JSON"
    int_array: str = ""  # "" = no arrays
    primary_key: str = "PRIMARY KEY"  # after the key column's type ("" = none inline)
    table_options: str = ""  # after CREATE TABLE's column list (ClickHouse: its ENGINE)
    #: What the backend's SQL has, for the checks that need it (``check(..., dialect=...)``):
    #: a PRIMARY KEY refuses a duplicate; UPDATE and DELETE statements report their rows.
    unique_keys: bool = True
    row_updates: bool = True


@dataclass
class Ctx:
    target: Target
    mode: str
    client: Client
    capabilities: frozenset[str]
    prefix: str  # every key (topic, table) a check uses starts with it: tests share backends
    inspector: Inspector | None = None
    sql_inspector: SqlInspector | None = None
    limits: KeyValueLimits = field(default_factory=KeyValueLimits)

    def key(self, name: str = "") -> str:
        return f"{self.prefix}{name}"

    @property
    def table(self) -> str:
        return "t_" + re.sub(r"[^a-z0-9]", "_", self.prefix.lower()).strip("_")

    @property
    def dialect(self) -> SqlDialect:
        assert self.target.sql_dialect is not None, f"{self.target.name} declares no SQL dialect"
        return self.target.sql_dialect

    def has(self, *capabilities: str) -> bool:
        return set(capabilities) <= self.capabilities

    async def call(self, operation: str, params: betterproto2.Message) -> Any:
        return await self.client.call(operation, params)

    async def stored(self, key: str) -> bytes | None:
        """``key``'s value in the backend itself, when there is one; else (memstore: the plugin
        is the backend) what the plugin's ``get`` returns."""
        if self.inspector is not None:
            return await trio.to_thread.run_sync(self.inspector.value, key)
        got = await self.call("get", data.GetRequest(key=key))
        return got.value if got.found else None

    async def backend_ttl_ms(self, key: str) -> int | type[NotImplemented] | None:
        if self.inspector is None:
            return NotImplemented
        return await trio.to_thread.run_sync(self.inspector.ttl_ms, key)

    async def sql_rows(self, sql: str) -> list[tuple[Any, ...]]:
        assert self.sql_inspector is not None, f"{self.target.name} has no SQL inspector"
        return await trio.to_thread.run_sync(self.sql_inspector.rows, sql)


@contextmanager
def expect_status(status: Status, match: str = "") -> Iterator[list[GrpcError]]:
    """The block must raise a ``GrpcError`` of ``status`` (its message containing ``match``).
    Yields a list that holds the error afterwards."""
    caught: list[GrpcError] = []
    try:
        yield caught
    except GrpcError as exc:
        if exc.status != status:
            raise AssertionError(f"expected {status.name}, got {exc}") from exc
        if match not in exc.message:
            raise AssertionError(f"expected {status.name} mentioning {match!r}, got {exc}") from exc
        caught.append(exc)
    else:
        raise AssertionError(f"expected {status.name}, the call succeeded")


async def eventually(
    probe: Callable[[], Awaitable[bool]], what: str, *, within: float = 30.0
) -> None:
    """Poll ``probe`` until it is true; ``within`` only catches a hang (never a timing claim)."""
    with trio.move_on_after(within):
        while not await probe():  # noqa: ASYNC110 - the state lives in another process
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: still not so after {within} s")


# -- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    contract: str  # a contract name, "refusal" (unclaimed features) or "auth"
    name: str
    func: Callable[[Ctx], Awaitable[None]]
    needs: frozenset[str]  # capabilities beyond the contract's
    doc: str
    #: SqlDialect flags the target's backend must have (its SQL, not the plugin's declaration).
    dialect: frozenset[str] = frozenset()

    def applies(self, capabilities: frozenset[str]) -> bool:
        return self.contract in claimed(capabilities) and self.needs <= capabilities

    def fits(self, target: Target) -> bool:
        """Applies to ``target``: its capabilities, and its backend's SQL where it matters."""
        if not self.applies(target.capabilities):
            return False
        d = target.sql_dialect
        return not self.dialect or (d is not None and all(getattr(d, f) for f in self.dialect))


CHECKS: list[Check] = []


def check(
    contract: str, *, needs: Iterable[str] = (), dialect: Iterable[str] = ()
) -> Callable[[Callable[[Ctx], Awaitable[None]]], Callable[[Ctx], Awaitable[None]]]:
    def register(func: Callable[[Ctx], Awaitable[None]]) -> Callable[[Ctx], Awaitable[None]]:
        doc = (func.__doc__ or "").strip()
        CHECKS.append(
            Check(contract, func.__name__, func, frozenset(needs), doc, frozenset(dialect))
        )
        return func

    return register


def checks_for(capabilities: frozenset[str], contract: str | None = None) -> list[Check]:
    return [
        c
        for c in CHECKS
        if c.applies(capabilities) and (contract is None or c.contract == contract)
    ]
