"""prism.sdk.metrics: RFC interval semantics."""

from __future__ import annotations

from prism.sdk import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def test_metrics_counters_are_per_interval_and_reset_on_fetch() -> None:
    clock = Clock()
    metrics = Metrics(wall_clock_ns=clock)
    metrics.record_request(failed=False, latency_ns=2_000_000)
    metrics.record_request(failed=True, latency_ns=4_000_000)
    metrics.cache_hit()
    metrics.cache_hit()
    metrics.cache_miss()
    clock.now = 5_000
    first = metrics.snapshot_and_reset()
    assert (first.requests_total, first.requests_failed) == (2, 1)
    assert first.latency_ms == 3.0
    assert (first.cache_hits, first.cache_misses) == (2, 1)
    assert first.interval_start_ns == 1_000
    second = metrics.snapshot_and_reset()
    assert (second.requests_total, second.requests_failed, second.latency_ms) == (0, 0, 0.0)
    assert (second.cache_hits, second.cache_misses) == (0, 0)
    assert second.interval_start_ns == 5_000


def test_metrics_connections_active_is_a_gauge_that_survives_fetches() -> None:
    metrics = Metrics()
    metrics.connections_active = 4
    assert metrics.snapshot_and_reset().connections_active == 4
    assert metrics.snapshot_and_reset().connections_active == 4


def test_metrics_requests_without_latency_do_not_skew_the_mean() -> None:
    metrics = Metrics()
    metrics.record_request(failed=False, latency_ns=1_000_000)
    metrics.record_request(failed=False, latency_ns=None)  # a stream
    snapshot = metrics.snapshot_and_reset()
    assert (snapshot.requests_total, snapshot.latency_ms) == (2, 1.0)


def test_metrics_peek_does_not_start_a_new_interval() -> None:
    metrics = Metrics()
    metrics.cache_miss(3)
    assert metrics.peek().cache_misses == 3
    assert metrics.snapshot_and_reset().cache_misses == 3
