"""Typed helpers for the key-value contract (``prism.data.v1``'s keyvalue.proto).

Values are ``bytes``; times to live are seconds (``float``), sent as whole milliseconds (at
least 1). Which operations and features a namespace serves is its plugin's: a feature it does
not have (an etag condition, a TTL) fails with ``Unimplemented`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prism._proto.prism.data.v1 import (
    DeleteManyRequest,
    DeleteManyResponse,
    DeleteRequest,
    DeleteResponse,
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
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    TransactOperation,
    TransactRequest,
    TransactResponse,
)
from prism._proto.prism.data.v1 import (
    ItemResult as ItemResultMessage,
)
from prism.grpc.wire.status import GrpcError, Status

if TYPE_CHECKING:
    from prism.client.client import Client

__all__ = ["DeleteItem", "GetResult", "ItemResult", "KeyValue", "SetItem"]


@dataclass(frozen=True, slots=True)
class GetResult:
    """A key's value as read. ``found`` is False when it does not exist or has expired
    (``value`` is then ``b""``); ``etag`` is its version ("" when not found, or when the
    backend has no etags); ``ttl`` the seconds until it expires, None when it does not (or
    when the backend cannot tell)."""

    key: str
    found: bool
    value: bytes = b""
    etag: str = ""
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class SetItem:
    """One write of :meth:`KeyValue.set_many` or :meth:`KeyValue.transact` (the arguments of
    :meth:`KeyValue.set`)."""

    key: str
    value: bytes
    ttl: float | None = None
    if_match: str | None = None
    if_absent: bool = False


@dataclass(frozen=True, slots=True)
class DeleteItem:
    """One delete of :meth:`KeyValue.delete_many` or :meth:`KeyValue.transact`."""

    key: str
    if_match: str | None = None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item's outcome in ``set_many``, ``delete_many`` and ``transact``: ``status`` OK, or
    ABORTED when its condition (``if_match``, ``if_absent``) failed; ``etag`` of a write that
    succeeded; ``deleted`` when a delete removed a live key."""

    key: str
    status: Status
    message: str = ""
    etag: str = ""
    deleted: bool = False

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def error(self) -> GrpcError | None:
        """The item's failure as the exception of its status (to raise), or None."""
        return None if self.ok else GrpcError.for_status(self.status, self.message)


def ttl_ms(ttl: float | None) -> int:
    """Seconds → the protocol's milliseconds (0: no TTL). A TTL must be positive."""
    if ttl is None:
        return 0
    if not ttl > 0:  # also NaN
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return max(1, round(ttl * 1000))


def _set_request(item: SetItem) -> SetRequest:
    return SetRequest(
        key=item.key,
        value=item.value,
        ttl_ms=ttl_ms(item.ttl),
        if_match=item.if_match or "",
        if_absent=item.if_absent,
    )


def _delete_request(item: DeleteItem) -> DeleteRequest:
    return DeleteRequest(key=item.key, if_match=item.if_match or "")


def _get_result(key: str, response: GetResponse) -> GetResult:
    remaining = response.ttl_remaining_ms
    return GetResult(
        key=key,
        found=response.found,
        value=response.value,
        etag=response.etag,
        ttl=None if remaining is None else remaining / 1000,
    )


def _status(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        return Status.UNKNOWN


def _item_results(keys: list[str], results: list[ItemResultMessage]) -> list[ItemResult]:
    if len(results) != len(keys):
        raise GrpcError.for_status(
            Status.INTERNAL, f"expected {len(keys)} item results, got {len(results)}"
        )
    return [
        ItemResult(key, _status(r.code), r.message, r.etag, r.deleted)
        for key, r in zip(keys, results, strict=True)
    ]


class KeyValue:
    """The key-value operations of one namespace: ``kv = client.keyvalue("kv")``.

    Calls are bounded by the caller's cancel scopes and by the client's per-call timeout
    (``client.with_timeout(s).keyvalue(...)``, or :meth:`with_timeout`); cancellation cancels
    the call on the wire. Errors are the ``GrpcError`` of their status: ``Aborted`` for a
    failed condition, ``InvalidArgument`` for an empty or oversized key or value,
    ``Unimplemented`` for what the plugin does not serve, ``NotFound`` for an unknown
    namespace.
    """

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<prism.client.KeyValue {self.namespace!r}>"

    def with_timeout(self, timeout: float | None) -> KeyValue:
        """The same namespace, each call bounded by ``timeout`` seconds (``DeadlineExceeded``)."""
        return KeyValue(self.client.with_timeout(timeout), self.namespace)

    async def get(self, key: str) -> GetResult:
        """The key's value, etag and remaining TTL; ``found=False`` when there is none."""
        response = await self.client.execute(
            self.namespace, "get", GetRequest(key=key), GetResponse
        )
        return _get_result(key, response)

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """Create or overwrite; returns the new etag ("" when the backend has none).

        ``ttl``: seconds to live (None: no TTL of its own). ``if_match``: write only if the
        key's live value has this etag; ``if_absent``: only if the key has no live value.
        A failed condition raises ``Aborted`` and writes nothing.
        """
        request = _set_request(SetItem(key, value, ttl, if_match, if_absent))
        response = await self.client.execute(self.namespace, "set", request, SetResponse)
        etag: str = response.etag
        return etag

    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        """Remove the key; True when a live key was removed. With ``if_match``, only if its
        value has that etag (else ``Aborted``, nothing deleted)."""
        response = await self.client.execute(
            self.namespace,
            "delete",
            _delete_request(DeleteItem(key, if_match)),
            DeleteResponse,
        )
        deleted: bool = response.deleted
        return deleted

    async def exists(self, key: str) -> bool:
        response = await self.client.execute(
            self.namespace, "exists", ExistsRequest(key=key), ExistsResponse
        )
        exists: bool = response.exists
        return exists

    async def expire(self, key: str, ttl: float) -> bool:
        """Give a live key a new time to live (seconds from now), keeping its value and etag.
        False when there was no live key."""
        request = ExpireRequest(key=key, ttl_ms=ttl_ms(ttl))
        response = await self.client.execute(self.namespace, "expire", request, ExpireResponse)
        found: bool = response.found
        return found

    async def persist(self, key: str) -> bool:
        """Remove a live key's time to live, so it no longer expires. False when there was no
        live key."""
        request = ExpireRequest(key=key, persist=True)
        response = await self.client.execute(self.namespace, "expire", request, ExpireResponse)
        found: bool = response.found
        return found

    async def get_many(self, keys: Iterable[str]) -> list[GetResult]:
        """Many keys in one call, in the order asked (not atomic: see :meth:`transact`)."""
        wanted = list(keys)
        response = await self.client.execute(
            self.namespace,
            "get_many",
            GetManyRequest(keys=wanted),
            GetManyResponse,
        )
        if len(response.items) != len(wanted):
            raise GrpcError.for_status(
                Status.INTERNAL, f"asked for {len(wanted)} keys, got {len(response.items)}"
            )
        return [_get_result(k, item) for k, item in zip(wanted, response.items, strict=True)]

    async def set_many(self, items: Mapping[str, bytes] | Iterable[SetItem]) -> list[ItemResult]:
        """Many independent writes in one call (a ``{key: value}`` mapping, or
        :class:`SetItem`\\ s with conditions and TTLs); one result per item, in order. A failed
        condition fails only its own item (``status`` ABORTED); a bad request (an empty key,
        too many items) fails the whole call before anything is written."""
        if isinstance(items, Mapping):
            items = [SetItem(k, v) for k, v in items.items()]
        batch = list(items)
        request = SetManyRequest(items=[_set_request(item) for item in batch])
        response = await self.client.execute(self.namespace, "set_many", request, SetManyResponse)
        return _item_results([i.key for i in batch], response.results)

    async def delete_many(self, items: Iterable[str | DeleteItem]) -> list[ItemResult]:
        """Many independent deletes (keys, or :class:`DeleteItem`\\ s with ``if_match``); one
        result per item, in order (``deleted``: a live key was removed)."""
        batch = [DeleteItem(i) if isinstance(i, str) else i for i in items]
        request = DeleteManyRequest(items=[_delete_request(item) for item in batch])
        response = await self.client.execute(
            self.namespace, "delete_many", request, DeleteManyResponse
        )
        return _item_results([i.key for i in batch], response.results)

    async def transact(self, operations: Iterable[SetItem | DeleteItem]) -> list[ItemResult]:
        """Writes and deletes applied in order, atomically: all or none. A failed condition
        raises ``Aborted`` (its message names the operation's index) and nothing is written;
        later operations see the effect of earlier ones on the same key."""
        batch = list(operations)
        ops = [
            TransactOperation(set=_set_request(op))
            if isinstance(op, SetItem)
            else TransactOperation(delete=_delete_request(op))
            for op in batch
        ]
        response = await self.client.execute(
            self.namespace,
            "transact",
            TransactRequest(operations=ops),
            TransactResponse,
        )
        return _item_results([op.key for op in batch], response.results)

    async def list_keys(
        self,
        prefix: str = "",
        *,
        page_size: int = 0,
        start_after: str = "",
    ) -> AsyncIterator[list[str]]:
        """The live keys starting with ``prefix``, in ascending order, a page (one call) at a
        time: ``async for page in kv.list_keys("user:"):``. ``page_size`` 0 is the backend's
        default; ``start_after`` resumes after a key. The client's timeout bounds each page's call.
        Keys written or deleted while listing may or may not be seen."""
        after = start_after
        while True:
            request = ListKeysRequest(prefix=prefix, limit=page_size, start_after=after)
            response = await self.client.execute(
                self.namespace, "list_keys", request, ListKeysResponse
            )
            if response.keys:
                yield list(response.keys)
            if not response.truncated or not response.keys:
                return
            after = response.keys[-1]

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every live key starting with ``prefix``, one by one (pages fetched as needed)."""
        async for page in self.list_keys(prefix):
            for key in page:
                yield key
