"""The RFC's ``PluginMetrics``, recorded for every operation.

Interval semantics (RFC-008): whoever fetches the metrics gets the counts *since the previous
fetch*, and the fetch starts a new interval. This holds for every counter here, not only the
cache counters the RFC names:

- ``requests_total``: operations that ended in the interval (a stream counts once, when it ends;
  the reserved ``_prism.metrics`` operation is not counted);
- ``requests_failed``: those that ended with an error status (a caller cancelling its own call
  is not a failure);
- ``latency_ms``: mean duration of the unary operations that completed in the interval,
  successful or failed (streams are excluded: a subscription's lifetime is not a latency);
- ``cache_hits`` / ``cache_misses``: what the plugin reported with ``cache_hit()`` /
  ``cache_miss()`` in the interval;
- ``interval_start_ns``: wall-clock (UTC) nanoseconds when the interval began.

``connections_active`` is a gauge the plugin sets; it is reported as is and never reset.

Exactly one consumer should fetch (the host's metrics poller): two consumers would each see only
part of every interval. Call these methods from the Trio thread only (no locks: Trio runs one
task at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prism._proto.prism.plugin.v1 import PluginMetrics

__all__ = ["Metrics"]


class Metrics:
    """A plugin's metric counters; the SDK records requests, the plugin reports the rest."""

    def __init__(self, *, wall_clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._wall_clock_ns = wall_clock_ns
        self.connections_active = 0
        self._reset()

    def _reset(self) -> None:
        self._interval_start_ns = self._wall_clock_ns()
        self._requests_total = 0
        self._requests_failed = 0
        self._latency_sum_ns = 0
        self._latency_count = 0
        self._cache_hits = 0
        self._cache_misses = 0

    def cache_hit(self, count: int = 1) -> None:
        self._cache_hits += count

    def cache_miss(self, count: int = 1) -> None:
        self._cache_misses += count

    def record_request(self, *, failed: bool, latency_ns: int | None) -> None:
        """Count one finished operation; ``latency_ns=None`` keeps it out of the mean latency."""
        self._requests_total += 1
        if failed:
            self._requests_failed += 1
        if latency_ns is not None:
            self._latency_sum_ns += latency_ns
            self._latency_count += 1

    def peek(self) -> PluginMetrics:
        """The current interval's counts, without starting a new interval."""
        mean_ns = self._latency_sum_ns / self._latency_count if self._latency_count else 0.0
        return PluginMetrics(
            requests_total=self._requests_total,
            requests_failed=self._requests_failed,
            latency_ms=mean_ns / 1e6,
            connections_active=self.connections_active,
            cache_hits=self._cache_hits,
            cache_misses=self._cache_misses,
            interval_start_ns=self._interval_start_ns,
        )

    def snapshot_and_reset(self) -> PluginMetrics:
        """The counts since the previous fetch; a new interval starts now."""
        snapshot = self.peek()
        self._reset()
        return snapshot
