"""Outlier ejection's arithmetic on Trio's autojump clock: when an endpoint is ejected, for how
long, how many may be, and how its count of past ejections decays."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from prism.config import OutlierConfig
from prism.hosting.outlier import OutlierDetector, OutlierState


def detector(n: int = 3, **settings: float) -> OutlierDetector:
    return OutlierDetector(OutlierConfig(**settings), [OutlierState() for _ in range(n)])


def fail(d: OutlierDetector, state: OutlierState, times: int) -> list[bool]:
    return [d.failure(state) for _ in range(times)]


async def test_outlier_ejects_at_consecutive_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = detector()
    state = d.states[0]
    assert fail(d, state, 5) == [False, False, False, False, True]
    assert state.ejected
    assert state.ejected_until == trio.current_time() + 30.0  # the base ejection time, once


async def test_outlier_success_resets_the_count(autojump_clock: trio.testing.MockClock) -> None:
    d = detector(consecutive_failures=3)
    state = d.states[0]
    fail(d, state, 2)
    d.success(state)
    assert fail(d, state, 2) == [False, False]
    assert not state.ejected
    assert d.failure(state)


async def test_outlier_ejection_time_grows_and_is_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = detector(consecutive_failures=1, base_ejection_time=100, max_ejection_time=250)
    state = d.states[0]
    lengths = []
    for _ in range(4):
        assert d.failure(state)
        lengths.append(state.ejected_until - trio.current_time())
        await trio.sleep_until(state.ejected_until)
        assert d.due(state)
        d.readmit(state)  # at once: no time served, so no decay
    assert lengths == [100, 200, 250, 250]


async def test_outlier_base_longer_than_max_is_used(autojump_clock: trio.testing.MockClock) -> None:
    d = detector(consecutive_failures=1, base_ejection_time=400, max_ejection_time=300)
    state = d.states[0]
    assert d.failure(state)
    assert state.ejected_until - trio.current_time() == 400


async def test_outlier_not_due_before_its_time(autojump_clock: trio.testing.MockClock) -> None:
    d = detector(consecutive_failures=1, base_ejection_time=10)
    state = d.states[0]
    d.failure(state)
    await trio.sleep(9.5)
    assert not d.due(state)
    await trio.sleep(0.5)
    assert d.due(state)
    d.readmit(state)
    assert (state.ejected, state.consecutive) == (False, 0)


@pytest.mark.parametrize(
    ("endpoints", "percent", "allowed"),
    [(3, 50, 1), (2, 50, 1), (4, 50, 2), (3, 100, 2), (1, 100, 0), (3, 10, 0), (5, 0, 0)],
)
async def test_outlier_max_ejected(endpoints: int, percent: int, allowed: int) -> None:
    assert detector(endpoints, max_ejection_percent=percent).max_ejected == allowed


async def test_outlier_cap_holds_and_frees_on_readmission(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = detector(3, consecutive_failures=2, base_ejection_time=5)
    a, b, c = d.states
    assert fail(d, a, 2) == [False, True]
    # Half of three, rounded down: one. b keeps failing and stays in balancing.
    assert fail(d, b, 4) == [False, False, False, False]
    assert (d.ejected_count, b.ejected) == (1, False)
    await trio.sleep(5)
    d.readmit(a)
    assert d.failure(b)  # room again: its next failure ejects it
    assert fail(d, c, 3) == [False, False, False]


async def test_outlier_multiplier_decays_while_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = detector(consecutive_failures=1, base_ejection_time=10, max_ejection_time=1000, interval=60)
    state = d.states[0]
    for _ in range(3):
        d.failure(state)
        await trio.sleep_until(state.ejected_until)
        d.readmit(state)
    assert state.ejections == 3
    await trio.sleep(130)  # two intervals served: the multiplier goes from 3 to 1, then +1
    d.failure(state)
    assert (state.ejections, state.ejected_until - trio.current_time()) == (2, 20)
