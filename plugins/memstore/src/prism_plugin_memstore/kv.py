"""memstore's key-value semantics over the store: conditions (etags), bulk items and
transactions, as synchronous functions.

Nothing here awaits, so each call runs to completion without another task seeing a part of it:
that is what makes a conditional write or a transaction atomic in memstore. The SDK has already
checked sizes, shapes and features (``prism.sdk.keyvalue``) before any of this runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import betterproto2

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    GetResponse,
    ItemResult,
    SetRequest,
    TransactRequest,
)
from prism.sdk import Aborted, ResourceExhausted, Status
from prism_plugin_memstore.store import Entry, KeyValueStore, StoreFull

__all__ = ["KeyValue"]


def _unmet(entry: Entry | None, if_match: str, if_absent: bool) -> str | None:
    """Why a request's condition fails on ``entry`` (None: it holds)."""
    if if_absent and entry is not None:
        return "the key exists (if_absent)"
    if if_match:
        if entry is None:
            return "the key does not exist (if_match)"
        if entry.etag != if_match:
            return "etag mismatch (if_match)"
    return None


@dataclass
class KeyValue:
    store: KeyValueStore
    default_ttl: float  # seconds; 0 = none

    def expires_at(self, ttl_ms: int, now: float) -> float | None:
        ttl = ttl_ms / 1000 if ttl_ms else self.default_ttl
        return now + ttl if ttl else None

    def full(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"memstore is full ({self.store.max_keys} keys): delete keys or raise max_keys"
        )

    def read(self, key: str, now: float) -> GetResponse:
        entry = self.store.entry(key, now)
        if entry is None:
            return GetResponse(found=False)
        remaining = None
        if entry.expires_at is not None:
            remaining = max(1, math.ceil((entry.expires_at - now) * 1000))
        return GetResponse(
            found=True, value=entry.value, etag=entry.etag, ttl_remaining_ms=remaining
        )

    def write(self, item: SetRequest, now: float, *, limit: bool = True) -> str:
        """Set ``item``; returns the new etag. ``Aborted`` when its condition fails."""
        reason = _unmet(self.store.entry(item.key, now), item.if_match, item.if_absent)
        if reason is not None:
            raise Aborted(f"key {item.key!r}: {reason}; nothing was written")
        try:
            expires_at = self.expires_at(item.ttl_ms, now)
            return self.store.set(item.key, item.value, expires_at, now, limit=limit).etag
        except StoreFull:
            raise self.full() from None

    def remove(self, item: DeleteRequest, now: float) -> bool:
        """Delete ``item``; True when a live key was removed. ``Aborted`` on a failed condition."""
        reason = _unmet(self.store.entry(item.key, now), item.if_match, False)
        if reason is not None:
            raise Aborted(f"key {item.key!r}: {reason}; nothing was deleted")
        return self.store.delete(item.key, now)

    def item(self, run: SetRequest | DeleteRequest, now: float) -> ItemResult:
        """One bulk item: a failed condition is the item's result, not the call's error."""
        try:
            if isinstance(run, SetRequest):
                return ItemResult(etag=self.write(run, now))
            return ItemResult(deleted=self.remove(run, now))
        except Aborted as exc:
            return ItemResult(code=Status.ABORTED, message=exc.message)

    def transact(self, request: TransactRequest, now: float) -> list[ItemResult]:
        """All operations or none: every condition and the key limit are checked against the
        state as earlier operations leave it, then everything is applied."""
        view: dict[str, bool] = {}  # key → live after the operations so far
        operations: list[SetRequest | DeleteRequest] = []
        for index, op in enumerate(request.operations):
            kind, item = betterproto2.which_one_of(op, "operation")
            assert isinstance(item, SetRequest | DeleteRequest)  # the SDK checked the shape
            if item.key in view:
                reason = self._unmet_in_view(view[item.key], item)
            else:
                entry = self.store.entry(item.key, now)
                if_absent = isinstance(item, SetRequest) and item.if_absent
                reason = _unmet(entry, item.if_match, if_absent)
            if reason is not None:
                raise Aborted(
                    f"operation {index} ({kind} {item.key!r}): {reason}; nothing was written"
                )
            view[item.key] = isinstance(item, SetRequest)
            operations.append(item)
        # The key limit applies to the outcome, whatever the order of sets and deletes.
        existed = {key: self.store.entry(key, now) is not None for key in view}
        growth = sum(live - existed[key] for key, live in view.items())
        if growth > 0 and not self.store.has_room(growth, now):
            raise self.full()
        return [
            ItemResult(etag=self.write(item, now, limit=False))
            if isinstance(item, SetRequest)
            else ItemResult(deleted=self.remove(item, now))
            for item in operations
        ]

    @staticmethod
    def _unmet_in_view(live: bool, item: SetRequest | DeleteRequest) -> str | None:
        # The key was written earlier in this transaction: its new etag is one nobody can know
        # yet, so if_match cannot hold; if_absent holds only after a delete.
        if isinstance(item, SetRequest) and item.if_absent and live:
            return "the key exists (if_absent)"
        if item.if_match:
            return "etag mismatch (if_match)" if live else "the key does not exist (if_match)"
        return None
