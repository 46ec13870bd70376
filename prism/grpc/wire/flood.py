"""Flood limits for one server connection: budgets per sliding window, and keepalive policy.

A peer can make a server work without asking it for anything: open streams and reset them at
once (CVE-2023-44487, "rapid reset"), or send PINGs and SETTINGS that each demand an
acknowledgement. :class:`FloodGuard` counts those per connection; past a budget the connection
ends with GOAWAY(ENHANCE_YOUR_CALM) and a debug string saying why (:data:`TOO_MANY_PINGS` is
grpc-go's, which clients such as grpc-go's and grpcio's recognise and back off on).

The keepalive enforcement policy follows grpc-go's ``keepalive.EnforcementPolicy`` (read from
internal/transport/http2_server.go, ``handlePing``): a PING that comes sooner than ``min_time``
after the previous one, or (unless ``permit_without_stream``) while no RPC is open and sooner
than two hours after the previous one, is a strike; more than two strikes and the connection
is closed. Sending HEADERS or DATA clears the strikes (a client's BDP pings follow our data).

Sans-IO: the caller passes the time (``now``), from whatever clock it runs on.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

TOO_MANY_PINGS = b"too_many_pings"
TOO_MANY_RESETS = b"too_many_resets"
TOO_MANY_SETTINGS = b"too_many_settings"

#: grpc-go's maxPingStrikes: strikes allowed before the connection is closed.
MAX_PING_STRIKES = 2
#: grpc-go's defaultPingTimeout: without streams (and without permit_without_stream), pings
#: closer together than this are strikes.
_IDLE_PING_INTERVAL = 2 * 60 * 60.0


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """What a peer may send per ``window`` seconds, and how often it may ping."""

    window: float = 10.0
    #: RST_STREAMs from the peer plus streams refused (over MAX_CONCURRENT_STREAMS or after
    #: our GOAWAY), per window.
    max_resets: int = 1000
    #: PING frames per window, whatever the keepalive policy says.
    max_pings: int = 1000
    #: SETTINGS frames per window.
    max_settings: int = 100
    #: keepalive EnforcementPolicy.MinTime: the shortest interval between a peer's pings.
    keepalive_min_time: float = 300.0
    #: keepalive EnforcementPolicy.PermitWithoutStream: may the peer ping with no RPC open?
    keepalive_permit_without_stream: bool = False

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError(f"flood window must be positive, not {self.window}")
        for name in ("max_resets", "max_pings", "max_settings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.keepalive_min_time < 0:
            raise ValueError(f"keepalive_min_time must be >= 0, not {self.keepalive_min_time}")


class _Budget:
    """At most ``limit`` events in any ``window`` seconds (the times of the last ``limit``)."""

    __slots__ = ("limit", "times", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.times: collections.deque[float] = collections.deque(maxlen=limit)

    def spend(self, now: float) -> bool:
        """Count one event; True when it is one too many."""
        times = self.times
        if len(times) == self.limit and now - times[0] < self.window:
            return True
        times.append(now)
        return False


class FloodGuard:
    """One connection's counters; each verb returns the GOAWAY debug data once over budget."""

    def __init__(self, limits: FloodLimits) -> None:
        self.limits = limits
        self._resets = _Budget(limits.max_resets, limits.window)
        self._pings = _Budget(limits.max_pings, limits.window)
        self._settings = _Budget(limits.max_settings, limits.window)
        self._last_ping: float | None = None
        self._strikes = 0
        #: Set by the connection whenever it sends HEADERS or DATA (grpc-go's resetPingStrikes).
        self.wrote = False

    def reset(self, now: float) -> bytes | None:
        """The peer reset a stream, or we refused one."""
        return TOO_MANY_RESETS if self._resets.spend(now) else None

    def settings(self, now: float) -> bytes | None:
        return TOO_MANY_SETTINGS if self._settings.spend(now) else None

    def ping(self, now: float, open_streams: int) -> bytes | None:
        if self._pings.spend(now):
            return TOO_MANY_PINGS
        last, self._last_ping = self._last_ping, now
        if self.wrote:
            self.wrote = False
            self._strikes = 0
            return None
        if last is not None:
            limits = self.limits
            if open_streams < 1 and not limits.keepalive_permit_without_stream:
                interval = _IDLE_PING_INTERVAL
            else:
                interval = limits.keepalive_min_time
            if now - last < interval:
                self._strikes += 1
        return TOO_MANY_PINGS if self._strikes > MAX_PING_STRIKES else None
