"""The circuit breaker stage: one breaker per plugin instance.

Closed, the breaker counts how the plugin's calls end. Only statuses that say the backend is
sick count as failures: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN. A caller's own
mistake (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED...) is an answer from a working
backend, a success here; CANCELLED (the client went away) counts neither way. The breaker opens
after ``consecutive_failures`` failures in a row, or when at least ``min_calls`` calls in the
last ``window`` seconds failed at ``failure_rate`` or more. Open, every call fails fast with
UNAVAILABLE and the reason, without entering the plugin, for ``open_seconds``; then it is
half-open: ``half_open_probes`` calls at a time go through; the first that succeeds closes
it, the first that fails opens it again (a probe that has not answered within
``open_seconds``, a stream that lasts, say, no longer holds its slot). A refused call carries
a ``google.rpc.RetryInfo`` with the time left open, like a rate-limited one.

A breaker belongs to the instance ``route.current`` names: a hot reload or a restart brings a
new instance and with it a closed breaker (the old one, still finishing the old instance's
calls, no longer reports). State is computed from ``trio.current_time()`` when a call asks:
no timer task.
"""

from __future__ import annotations

import math

import trio

from prism.config.traffic import BreakerConfig
from prism.grpc.wire.status import Status, Unavailable
from prism.proxy.metrics import BreakerState, NamespaceMetrics
from prism.proxy.pipeline import Breaker, NoBreaker, Route
from prism.proxy.ratelimit import STATUS_DETAILS, retry_status_details

__all__ = ["FAILURES", "CircuitBreaker", "InstanceBreakers"]

#: The statuses that count as the backend failing.
FAILURES = frozenset(
    {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.INTERNAL, Status.UNKNOWN}
)
_BUCKETS = 10  # the failure-rate window slides in tenths


class CircuitBreaker:
    """The breaker of one plugin instance (implements ``pipeline.Breaker``)."""

    def __init__(
        self, namespace: str, config: BreakerConfig, metrics: NamespaceMetrics | None
    ) -> None:
        self._namespace = namespace
        self._config = config
        #: None once the instance is no longer current: its state is not the namespace's.
        self.metrics = metrics
        self.state: BreakerState = "closed"
        self.consecutive = 0
        self.opened_at = -math.inf
        self._reason = ""
        self._probes = 0  # half-open: probe calls in flight
        self._probed_at = -math.inf  # when the latest probe was let through
        self._slot = config.window / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._bucket = 0  # the index (time // slot) of the newest bucket
        self.calls = 0  # in the window
        self.failures = 0
        if metrics is not None:
            metrics.breaker("closed")

    def admit(self) -> None:
        state = self.state
        if state == "closed":
            return
        now = trio.current_time()
        if state == "open":
            left = self.opened_at + self._config.open_seconds - now
            if left > 0:
                self._refuse(f"retry in {_seconds(left)} s", left)
            self._enter("half_open")
        if self._probes >= self._config.half_open_probes:
            if now - self._probed_at < self._config.open_seconds:
                self._refuse("a probe call is testing the plugin", self._config.open_seconds)
            # The probes have not answered for open_seconds (a stream that lasts, a hung
            # call): they no longer hold the slots.
            self._probes = 0
        self._probes += 1
        self._probed_at = now

    def record(self, status: Status) -> None:
        if status == Status.CANCELLED:
            if self.state == "half_open" and self._probes:
                self._probes -= 1
            return
        failed = status in FAILURES
        state = self.state
        if state == "closed":
            self._count(failed)
        elif state == "half_open":
            if self._probes:
                self._probes -= 1
            if failed:
                self._open("after a failed probe call")
            else:
                self._close()
        # open: a call admitted before the breaker opened; it changes nothing

    def _count(self, failed: bool) -> None:
        now = trio.current_time()
        index = int(now / self._slot)
        if index != self._bucket:
            self._advance(index)
        slot = index % _BUCKETS
        self._calls[slot] += 1
        self.calls += 1
        if not failed:
            self.consecutive = 0
            return
        self._failures[slot] += 1
        self.failures += 1
        self.consecutive += 1
        config = self._config
        if self.consecutive >= config.consecutive_failures:
            self._open(f"after {self.consecutive} consecutive failures")
        elif self.calls >= config.min_calls and self.failures >= config.failure_rate * self.calls:
            self._open(f"after {self.failures} failures in {self.calls} calls")

    def _advance(self, index: int) -> None:
        """Drop the buckets that slid out of the window (all of them after a long pause)."""
        for old in range(max(self._bucket + 1, index - _BUCKETS + 1), index + 1):
            slot = old % _BUCKETS
            self.calls -= self._calls[slot]
            self.failures -= self._failures[slot]
            self._calls[slot] = self._failures[slot] = 0
        self._bucket = index

    def _open(self, why: str) -> None:
        self._reason = why
        self.opened_at = trio.current_time()
        self._enter("open")

    def _close(self) -> None:
        self.consecutive = 0
        self.calls = self.failures = 0
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._enter("closed")

    def _enter(self, state: BreakerState) -> None:
        previous, self.state = self.state, state
        self._probes = 0
        if self.metrics is not None:
            self.metrics.breaker(state, previous)

    def _refuse(self, then: str, delay: float) -> None:
        message = f"circuit breaker open for namespace {self._namespace!r} {self._reason}; {then}"
        details = retry_status_details(Status.UNAVAILABLE, message, delay)
        raise Unavailable(message, trailers=[(STATUS_DETAILS, details)])


def _seconds(left: float) -> str:
    """4.2, 0.35, 300: two significant digits, never an exponent."""
    return f"{left:.2g}" if left < 10 else f"{left:.0f}"


class InstanceBreakers:
    """A namespace's breakers (implements ``pipeline.Breakers``): one for its current
    instance, made when that instance is first seen, and made anew each time the instance
    serves again after being down.

    A call to an instance that is down (a crashed sidecar restarting, a remote reconnecting)
    never reaches the plugin: the route answers UNAVAILABLE by itself, so it passes no breaker
    and counts in none. When the host routes to the instance again, its health check has just
    said the plugin answers: the breaker starts closed, or recovery would wait ``open_seconds``
    more after the plugin is back."""

    def __init__(self, namespace: str, config: BreakerConfig, metrics: NamespaceMetrics) -> None:
        self._namespace = namespace
        self._config = config
        self._metrics = metrics
        self._instance: object = None
        self._serving: object = None
        self._breaker: CircuitBreaker | None = None
        self._none = NoBreaker()

    def for_route(self, route: Route) -> Breaker:
        instance = route.current
        # The plugin client an instance routes to: None while it is down, a new one each time
        # it serves again (prism.hosting's Instance; other routes have none: always serving).
        serving = getattr(instance, "client", instance)
        if instance is self._instance and serving is self._serving and self._breaker is not None:
            return self._breaker
        if instance is None or serving is None:
            return self._none  # down: the route answers UNAVAILABLE by itself
        if self._breaker is not None:
            self._breaker.metrics = None
        self._instance = instance
        self._serving = serving
        self._breaker = CircuitBreaker(self._namespace, self._config, self._metrics)
        return self._breaker
