"""Outlier ejection among a remote plugin's endpoints, after Envoy's consecutive-failure
detection (``outlier_detection`` in the plugin's config, :class:`~prism.config.OutlierConfig`).

An endpoint's failures in a row (a call answered UNAVAILABLE or DEADLINE_EXCEEDED, a connection
refused or lost, a failed reconnection) are counted; any other answer from the plugin resets the
count. At ``consecutive_failures`` the endpoint is ejected — taken out of balancing — for
``base_ejection_time`` times the number of times it has been ejected, capped at
``max_ejection_time``, unless ``max_ejection_percent`` of the endpoints are ejected already
(rounded down, and never every endpoint). An ejected endpoint is re-admitted once its time is
up *and* it is connected and healthy: its own connection keeps being probed (reconnected and
health-checked) meanwhile. Each ``interval`` an endpoint serves without an ejection takes one
off its count of ejections, so an endpoint that failed once long ago starts over at the base.

Pure bookkeeping on Trio's clock (``trio.current_time()``): the balancer
(:mod:`prism.hosting.balancer`) calls it; tests drive it with an autojump clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from prism.config import OutlierConfig

__all__ = ["OutlierDetector", "OutlierState"]


@dataclass
class OutlierState:
    """One endpoint's standing with the detector."""

    consecutive: int = 0
    """Failures in a row since its last success (or re-admission)."""
    ejections: int = 0
    """Times ejected, less one per ``interval`` served since: the ejection time's multiplier."""
    ejected: bool = False
    ejected_until: float = 0.0
    """Trio clock time its current ejection ends (meaningful while ``ejected``)."""
    admitted_at: float = 0.0
    """When it was last re-admitted (or first seen): where the multiplier's decay counts from."""


class OutlierDetector:
    """Ejection decisions over a fixed set of endpoints' :class:`OutlierState`."""

    def __init__(self, config: OutlierConfig, states: list[OutlierState]) -> None:
        self.config = config
        self.states = states
        now = trio.current_time()
        for state in states:
            state.admitted_at = now

    @property
    def max_ejected(self) -> int:
        """How many endpoints may be ejected at once: ``max_ejection_percent`` of them,
        rounded down, and at most all but one."""
        allowed = len(self.states) * self.config.max_ejection_percent // 100
        return max(0, min(allowed, len(self.states) - 1))

    @property
    def ejected_count(self) -> int:
        return sum(state.ejected for state in self.states)

    def success(self, state: OutlierState) -> None:
        state.consecutive = 0

    def failure(self, state: OutlierState) -> bool:
        """Count one failure; True when it ejects the endpoint (it was not ejected, it reached
        ``consecutive_failures``, and the cap on ejections leaves room)."""
        state.consecutive += 1
        if state.ejected or state.consecutive < self.config.consecutive_failures:
            return False
        if self.ejected_count >= self.max_ejected:
            return False
        now = trio.current_time()
        config = self.config
        decayed = int((now - state.admitted_at) // config.interval)
        state.ejections = max(0, state.ejections - decayed) + 1
        longest = max(config.max_ejection_time, config.base_ejection_time)
        state.ejected = True
        state.ejected_until = now + min(config.base_ejection_time * state.ejections, longest)
        return True

    def due(self, state: OutlierState) -> bool:
        """Ejected, and its ejection time is up (re-admit it once it is healthy)."""
        return state.ejected and trio.current_time() >= state.ejected_until

    def readmit(self, state: OutlierState) -> None:
        state.ejected = False
        state.consecutive = 0
        state.admitted_at = trio.current_time()

    def next_due(self) -> float | None:
        """The earliest end of a current ejection (Trio clock), or None when none is ejected."""
        ends = [state.ejected_until for state in self.states if state.ejected]
        return min(ends) if ends else None
