"""A namespace's ``traffic`` section: rate limits, concurrency limit, circuit breaker, default
deadline, read by the request pipeline's traffic stages (``prism.proxy.assembly``).

Defaults: no rate limit, no concurrency limit and no default deadline (nothing is limited
until the operator says how much a namespace takes); the circuit breaker is on, with
thresholds that only a backend that is really down reaches (10 failures in a row, or half of
at least 20 calls in 10 s, counting only UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from prism.config._model import Model
from prism.config._types import Flag, PositiveInt, Seconds

__all__ = [
    "BreakerConfig",
    "BucketConfig",
    "CallerRateLimitConfig",
    "ConcurrencyConfig",
    "RateLimitConfig",
    "TrafficConfig",
]


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PydanticCustomError("expected_number", "expected a finite number")
    return float(value)


def _count(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PydanticCustomError("expected_count", "expected a whole number, 0 or more")
    return value


Number = Annotated[float, BeforeValidator(_number)]
Count = Annotated[int, Field(ge=0), BeforeValidator(_count)]


class BucketConfig(Model):
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    rate: Annotated[Number, Field(gt=0, le=1e6)]
    """Calls a second, sustained (a token is added every 1/rate s)."""
    burst: PositiveInt | None = None
    """Calls that may come at once after a quiet spell (the bucket's size); none: the rate,
    rounded up (at least 1)."""


class RateLimitConfig(BucketConfig):
    """The namespace's limit: this proxy's own token bucket (``scope: local``), or one limit
    for every proxy of the fleet, kept in Redis (``scope: fleet``, ``fleet.redis``)."""

    scope: Literal["local", "fleet"] = "local"
    """``local``: each proxy allows ``rate`` on its own. ``fleet``: the proxies sharing
    ``fleet.redis`` allow ``rate`` together (GCRA in Redis, on Redis's clock)."""
    on_redis_failure: Literal["open", "closed"] = "open"
    """``fleet`` only: while Redis is unreachable, ``open`` limits each proxy with a local
    bucket of ``fallback_rate``; ``closed`` refuses every call (RESOURCE_EXHAUSTED)."""
    fallback_rate: Annotated[Number, Field(gt=0, le=1e6)] | None = None
    """``fleet``, ``open`` only: calls a second each proxy allows on its own while Redis is
    unreachable (its bucket's size: ``burst``); none: ``rate`` (the fleet may then take
    ``rate`` x its number of proxies)."""
    max_batch: PositiveInt = 20
    """``fleet`` only: most tokens a proxy takes from Redis in one call and spends locally
    (never more than the bucket's size, ``burst``). The fleet may exceed ``rate`` x t +
    ``burst`` by at most ``max_batch`` x proxies over any period t (tokens taken but not yet
    spent); fewer means more Redis calls a request."""
    max_wait: Seconds = 0.05
    """``fleet`` only: seconds a call may wait for Redis when this proxy holds no token; an
    answer later than that is treated as Redis being unreachable, for that call
    (``on_redis_failure``)."""


class CallerRateLimitConfig(BucketConfig):
    """A token bucket per caller (the identity's subject), in each proxy."""

    max_callers: PositiveInt = 10000
    """Callers whose buckets are kept; beyond, the least recently seen is forgotten (it comes
    back with a full bucket), so a flood of subjects cannot exhaust memory."""


class ConcurrencyConfig(Model):
    """A cap of calls in flight, with a bounded wait queue."""

    max_in_flight: PositiveInt
    """Unary calls (Execute) in progress at once in this namespace."""
    max_streams: PositiveInt | None = None
    """ExecuteStream calls open at once (their own cap: a subscription may last for hours and
    must not take the unary calls' permits); none: not capped."""
    max_queue: Count = 0
    """Calls that may wait for a permit (per cap); one more is refused at once
    (RESOURCE_EXHAUSTED, ``queue_full``). 0: no queue."""
    queue_timeout: Seconds = 1.0
    """Seconds a call may wait in the queue (RESOURCE_EXHAUSTED, ``queue_timeout``, beyond)."""


class BreakerConfig(Model):
    """The circuit breaker of each plugin instance serving the namespace."""

    enabled: Flag = True
    """Off: every call goes to the plugin, however it fails."""
    consecutive_failures: PositiveInt = 10
    """Failures in a row that open the breaker."""
    failure_rate: Annotated[Number, Field(gt=0, le=1)] = 0.5
    """Share of failed calls over ``window`` that opens the breaker (with ``min_calls``)."""
    window: Seconds = 10.0
    """Seconds over which the failure rate is measured (sliding, in tenths)."""
    min_calls: PositiveInt = 20
    """Calls the window must hold before its failure rate counts."""
    open_seconds: Seconds = 5.0
    """Seconds the breaker stays open (failing fast) before letting probes through."""
    half_open_probes: PositiveInt = 1
    """Calls let through at once while half-open: the first to succeed closes the breaker,
    the first to fail opens it again."""


class TrafficConfig(Model):
    """How much traffic a namespace takes, and what protects its plugin."""

    rate_limit: RateLimitConfig | None = None
    """A token bucket for the whole namespace (every caller together); none: unlimited."""
    caller_rate_limit: CallerRateLimitConfig | None = None
    """A token bucket per caller (by the identity's subject; every anonymous caller is one
    caller); none: unlimited."""
    concurrency: ConcurrencyConfig | None = None
    """A cap of calls in flight and a bounded wait queue; none: no cap."""
    breaker: BreakerConfig = BreakerConfig()
    """The circuit breaker, per plugin instance."""
    default_timeout: Seconds | None = None
    """Seconds a unary call may take when the client sent no deadline (DEADLINE_EXCEEDED
    beyond); a client's own deadline always wins. None: unbounded."""
