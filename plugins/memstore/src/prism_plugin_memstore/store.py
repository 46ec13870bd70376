"""The key-value map behind memstore: TTLs, a key limit, and keys kept in order for listing.

Synchronous and clock-free: every call takes ``now`` (seconds on the plugin's clock, which is
``trio.current_time()``), so the store is trivially testable and never blocks.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

__all__ = ["Entry", "KeyValueStore", "StoreFull"]


class StoreFull(Exception):
    """A new key would exceed ``max_keys``."""


@dataclass(slots=True)
class Entry:
    value: bytes
    expires_at: float | None  # on the plugin's clock; None = never

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class KeyValueStore:
    """Expired entries are invisible at once and removed lazily (on access, when the store is
    full, or by ``sweep``). ``max_keys`` 0 = unlimited."""

    def __init__(self, max_keys: int = 0) -> None:
        self.max_keys = max_keys
        self._entries: dict[str, Entry] = {}
        # All keys (live or not yet swept) in ascending order, for list_keys.
        self._sorted: list[str] = []
        # (expires_at, key) for every TTL ever set; stale pairs (key overwritten or deleted) are
        # skipped when they come up. Rebuilt when stale pairs dominate.
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Keys held, including expired ones not yet swept."""
        return len(self._entries)

    def get(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.live(now):
            self._remove(key)
            return None
        return entry.value

    def set(self, key: str, value: bytes, expires_at: float | None, now: float) -> None:
        """Create or overwrite ``key``. Raises ``StoreFull`` when a new key does not fit."""
        if key not in self._entries:
            if self.max_keys and len(self._entries) >= self.max_keys:
                self.sweep(now)
            if self.max_keys and len(self._entries) >= self.max_keys:
                raise StoreFull
            bisect.insort(self._sorted, key)
        self._entries[key] = Entry(value, expires_at)
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
