"""FloodGuard: budgets per sliding window and grpc-go's keepalive enforcement, on a fake clock."""

from __future__ import annotations

import pytest

from prism.grpc.wire.flood import (
    TOO_MANY_PINGS,
    TOO_MANY_RESETS,
    TOO_MANY_SETTINGS,
    FloodGuard,
    FloodLimits,
)


def test_flood_resets_over_budget_within_the_window() -> None:
    guard = FloodGuard(FloodLimits(window=10, max_resets=3))
    assert [guard.reset(t) for t in (0, 1, 2)] == [None, None, None]
    assert guard.reset(9.9) == TOO_MANY_RESETS


def test_flood_budget_slides_with_time() -> None:
    guard = FloodGuard(FloodLimits(window=10, max_resets=3))
    for t in (0, 1, 2):
        assert guard.reset(t) is None
    # The oldest falls out of the window: one more is allowed, and so on.
    assert guard.reset(10.0) is None
    assert guard.reset(11.0) is None
    assert guard.reset(11.5) == TOO_MANY_RESETS
    # A steady rate under the budget never trips it.
    steady = FloodGuard(FloodLimits(window=10, max_resets=3))
    assert all(steady.reset(t * 4.0) is None for t in range(100))


def test_flood_settings_budget() -> None:
    guard = FloodGuard(FloodLimits(max_settings=2))
    assert guard.settings(0) is None
    assert guard.settings(0) is None
    assert guard.settings(0) == TOO_MANY_SETTINGS


def test_flood_pings_without_streams_strike_as_in_grpc_go() -> None:
    guard = FloodGuard(FloodLimits())  # min_time 300 s, no pings without streams
    # The first ping is free; each following one within two hours is a strike; the third
    # strike is one too many.
    assert [guard.ping(t, open_streams=0) for t in (0, 60, 120)] == [None, None, None]
    assert guard.ping(180, open_streams=0) == TOO_MANY_PINGS


def test_flood_pings_with_streams_follow_min_time() -> None:
    guard = FloodGuard(FloodLimits(keepalive_min_time=300))
    for t in range(0, 3000, 300):  # exactly at the minimum interval: never a strike
        assert guard.ping(float(t), open_streams=1) is None
    assert guard.ping(2701, open_streams=1) is None  # strike 1
    assert guard.ping(2702, open_streams=1) is None  # strike 2
    assert guard.ping(2703, open_streams=1) == TOO_MANY_PINGS


def test_flood_permit_without_stream_uses_min_time() -> None:
    guard = FloodGuard(FloodLimits(keepalive_min_time=10, keepalive_permit_without_stream=True))
    assert all(guard.ping(t * 10.0, open_streams=0) is None for t in range(20))


def test_flood_sending_data_clears_ping_strikes() -> None:
    # A client's BDP pings follow the data we send: each write clears the strikes.
    guard = FloodGuard(FloodLimits())
    for t in range(100):
        guard.wrote = True
        assert guard.ping(float(t), open_streams=1) is None


def test_flood_ping_budget_holds_whatever_the_policy() -> None:
    limits = FloodLimits(
        keepalive_min_time=0, keepalive_permit_without_stream=True, max_pings=5, window=1
    )
    guard = FloodGuard(limits)
    assert [guard.ping(0.1 * t, open_streams=0) for t in range(5)] == [None] * 5
    assert guard.ping(0.6, open_streams=0) == TOO_MANY_PINGS


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 0}, {"max_resets": 0}, {"max_pings": 0}, {"keepalive_min_time": -1}],
)
def test_flood_limits_refuse_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FloodLimits(**kwargs)  # type: ignore[arg-type]
