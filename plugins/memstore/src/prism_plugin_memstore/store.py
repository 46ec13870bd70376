"""The key-value map behind memstore: TTLs, versions (etags), a key limit, and keys kept in
order for listing.

Synchronous and clock-free: every call takes ``now`` (seconds on the plugin's clock, which is
``trio.current_time()``), so the store is trivially testable and never blocks — and a sequence
of calls with no ``await`` between them is atomic, which is how the plugin makes conditional
writes and transactions.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import secrets
from dataclasses import dataclass

__all__ = ["Entry", "KeyValueStore", "StoreFull"]


class StoreFull(Exception):
    """A new key would exceed ``max_keys``."""


@dataclass(slots=True)
class Entry:
    value: bytes
    expires_at: float | None  # on the plugin's clock; None = never
    version: int  # unique per write within the store; its etag is str(version)

    @property
    def etag(self) -> str:
        return str(self.version)

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class KeyValueStore:
    """Expired entries are invisible at once and removed lazily (on access, when the store is
    full, or by ``sweep``). ``max_keys`` 0 = unlimited."""

    def __init__(self, max_keys: int = 0, first_version: int | None = None) -> None:
        self.max_keys = max_keys
        # A random start: an etag a client kept from an earlier instance (memstore forgets
        # everything on reload) does not match a value written by this one.
        start = secrets.randbits(62) if first_version is None else first_version
        self._versions = itertools.count(start + 1)
        self._entries: dict[str, Entry] = {}
        # All keys (live or not yet swept) in ascending order, for list_keys.
        self._sorted: list[str] = []
        # (expires_at, key) for every TTL ever set; stale pairs (key overwritten or deleted) are
        # skipped when they come up. Rebuilt when stale pairs dominate.
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Keys held, including expired ones not yet swept."""
        return len(self._entries)

    def entry(self, key: str, now: float) -> Entry | None:
        """The live entry of ``key`` (never mutate it), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.live(now):
            self._remove(key)
            return None
        return entry

    def get(self, key: str, now: float) -> bytes | None:
        entry = self.entry(key, now)
        return None if entry is None else entry.value

    def has_room(self, new_keys: int, now: float) -> bool:
        """Whether ``new_keys`` more keys fit (sweeping expired ones if they would not)."""
        if not self.max_keys or len(self._entries) + new_keys <= self.max_keys:
            return True
        self.sweep(now)
        return len(self._entries) + new_keys <= self.max_keys

    def set(
        self, key: str, value: bytes, expires_at: float | None, now: float, *, limit: bool = True
    ) -> Entry:
        """Create or overwrite ``key``; returns the new entry. Raises ``StoreFull`` when a new
        key does not fit (``limit=False``: the caller has checked the room already)."""
        if key not in self._entries:
            if limit and not self.has_room(1, now):
                raise StoreFull
            bisect.insort(self._sorted, key)
        entry = self._entries[key] = Entry(value, expires_at, next(self._versions))
        self._track_expiry(key, expires_at)
        return entry

    def expire(self, key: str, expires_at: float | None, now: float) -> bool:
        """Give a live ``key`` a new expiry (None = never), keeping its value and version;
        False when there is no live key."""
        entry = self.entry(key, now)
        if entry is None:
            return False
        entry.expires_at = expires_at
        self._track_expiry(key, expires_at)
        return True

    def _track_expiry(self, key: str, expires_at: float | None) -> None:
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, key))
            if len(self._expiries) > 2 * len(self._entries) + 1024:
                self._compact()

    def delete(self, key: str, now: float) -> bool:
        """Remove ``key``; True when it was live."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._remove(key)
        return entry.live(now)

    def exists(self, key: str, now: float) -> bool:
        return self.get(key, now) is not None

    def list_keys(
        self, prefix: str, start_after: str, limit: int, now: float
    ) -> tuple[list[str], bool]:
        """Up to ``limit`` live keys with ``prefix``, ascending, after ``start_after``; and
        whether more remain."""
        if start_after >= prefix:
            index = bisect.bisect_right(self._sorted, start_after)
        else:
            index = bisect.bisect_left(self._sorted, prefix)
        keys: list[str] = []
        while index < len(self._sorted):
            key = self._sorted[index]
            if not key.startswith(prefix):
                break
            if not self._entries[key].live(now):
                self._remove(key)  # the next key moves into this index
                continue
            if len(keys) == limit:
                return keys, True
            keys.append(key)
            index += 1
        return keys, False

    def sweep(self, now: float) -> int:
        """Remove every expired entry; returns how many."""
        removed = 0
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                self._remove(key)
                removed += 1
        return removed

    def _remove(self, key: str) -> None:
        del self._entries[key]
        index = bisect.bisect_left(self._sorted, key)
        del self._sorted[index]

    def _compact(self) -> None:
        self._expiries = [
            (entry.expires_at, key)
            for key, entry in self._entries.items()
            if entry.expires_at is not None
        ]
        heapq.heapify(self._expiries)
