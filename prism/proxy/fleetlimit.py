"""Fleet rate limits: one limit for every proxy that shares a Redis (``scope: fleet``).

The limit is GCRA (the generic cell rate algorithm: a token bucket written as one number, the
bucket's "theoretical arrival time") in a Lua script that Redis runs atomically, on Redis's own
clock (``redis.call('TIME')``): proxies whose clocks disagree still share one bucket. The script
is sent once and called by its SHA (``EVALSHA``; coredis loads it again when Redis answers
NOSCRIPT, after a restart or a ``SCRIPT FLUSH``).

A Redis call costs ~0.4-0.8 ms through coredis on Trio: far too much per request at high
rates. So each proxy takes tokens in batches and spends them locally: a batch covers about
``LEAD`` seconds of this proxy's own traffic (its rate, observed), at least 1 and at most
``max_batch`` (and never more than the bucket's size), and the next batch is fetched in the
background when three quarters of the current one are spent, so a steady caller does not
wait for Redis.
Accuracy: tokens a proxy holds are already counted by Redis, so over any period t the fleet
admits at most ``rate`` x t + ``burst`` + ``max_batch`` x proxies calls, and tokens a proxy
took but never spends (its traffic stopped, its namespace was reloaded) are lost to the others,
at most ``max_batch`` each. When Redis says the bucket is empty, this proxy refuses calls
locally until a batch could be free again, without asking Redis per call.

Redis unreachable (refused, timed out, killed mid-call, slower than ``fleet.redis.call_timeout``):
the connection is marked down (logged once, ``prism_fleet_redis_up`` 0), probed with a pause
doubling from 0.1 s up to ``reconnect_max``, and marked up when it answers (logged once). While
it is down, each fleet-limited namespace decides by its ``on_redis_failure``: ``open`` admits
through a local token bucket of ``fallback_rate``, ``closed`` refuses (RESOURCE_EXHAUSTED).
A call never waits for Redis longer than its namespace's ``max_wait``: beyond, that call too is
decided by ``on_redis_failure``. Tokens in hand when Redis went away are still spent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import cast

import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from prism.config.fleet import FleetRedisConfig
from prism.config.traffic import CallerRateLimitConfig, RateLimitConfig
from prism.grpc.wire.status import ResourceExhausted
from prism.proxy.metrics import NamespaceMetrics, ProxyMetrics
from prism.proxy.ratelimit import TokenBuckets, bucket_size, refusal
from prism.proxy.request import RequestInfo

__all__ = ["GCRA", "LEAD", "FleetLimit", "FleetRedis", "RedisDown"]

log = logging.getLogger("prism.proxy.fleetlimit")

#: Seconds of this proxy's observed traffic one batch of tokens covers.
LEAD = 0.05
_FIRST_PAUSE = 0.1

# KEYS[1]: the limit's key. ARGV: emission interval (µs a token), capacity (µs: burst x the
# interval), tokens wanted. Returns {granted, µs until one is free (when none was)}.
# Times are µs since 2025-01-01 (not 1970): a double then keeps 0.02 µs of precision.
GCRA = """
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1735689600) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local free = math.floor((now + capacity - tat) / interval + 1e-9)
if free < 1 then
  return {0, math.ceil(tat + interval - capacity - now)}
end
if free > want then free = want end
tat = tat + free * interval
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {free, 0}
"""

_FAILURES = (RedisError, OSError, trio.TooSlowError)


class RedisDown(Exception):
    """Redis did not answer (the connection is marked down until a probe succeeds)."""


class FleetRedis:
    """One proxy's connection to the Redis its fleet limits share, and its health.

    :meth:`run` (in the pipeline's background) holds coredis's connection pool open and is
    where refills and probes run. ``up`` is optimistic at start: the first call finds out.
    """

    def __init__(
        self, config: FleetRedisConfig, password: str | None, metrics: ProxyMetrics
    ) -> None:
        self.config = config
        host, _, port = config.address.rpartition(":")
        self._client: coredis.Redis[bytes] = coredis.Redis(
            host.strip("[]"),
            int(port),
            config.db,
            username=config.username,
            password=password,
            connect_timeout=config.call_timeout,
            stream_timeout=config.call_timeout,
            max_connections=config.max_connections,
            client_name="prism-fleet-limits",
            retry_policy=NoRetryPolicy(),  # an outage is handled here, once, not per call
        )
        self._script = self._client.register_script(GCRA)
        self._nursery: trio.Nursery | None = None
        self.up = True
        self._up = metrics.fleet_redis_up.labels()
        self._up.set(1)
        self._outages = metrics.fleet_redis_outages.labels()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled (which closes the connections and ends refills and probes)."""
        async with self._client, trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start_soon(self, work: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            raise RuntimeError("the fleet limits' Redis connection is not running")
        self._nursery.start_soon(work)

    async def take(
        self, key: str, interval: float, capacity: float, want: int
    ) -> tuple[int, float]:
        """Up to ``want`` tokens of the GCRA bucket at ``key``: (tokens granted, seconds until
        one is free when none was). RedisDown when Redis failed or took longer than
        ``call_timeout`` (Redis is then marked down). Cancellation abandons the call (the
        tokens Redis may have granted are lost: an undercount, never an overshoot)."""
        try:
            with trio.fail_after(self.config.call_timeout):
                reply: object = await self._script(
                    keys=[key], args=[repr(interval), repr(capacity), want]
                )
        except _FAILURES as exc:
            self._down(exc)
            raise RedisDown(str(exc)) from exc
        granted, wait = cast(list[int], reply)
        return int(granted), int(wait) / 1e6

    def _down(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self._up.set(0)
        self._outages.inc()
        reason = "no answer in time" if isinstance(exc, trio.TooSlowError) else str(exc)
        log.warning(
            "fleet limits: Redis at %s is unreachable (%s: %s); namespaces with a fleet limit "
            "follow their on_redis_failure until it answers",
            self.config.address,
            type(exc).__name__,
            reason,
        )
        self.start_soon(self._recover)

    async def _recover(self) -> None:
        pause = _FIRST_PAUSE
        while True:
            await trio.sleep(pause)
            try:
                with trio.fail_after(self.config.call_timeout):
                    await self._client.ping()
            except _FAILURES:
                pause = min(pause * 2, self.config.reconnect_max)
                continue
            break
        self.up = True
        self._up.set(1)
        log.info("fleet limits: Redis at %s answers again", self.config.address)


class FleetLimit:
    """A namespace's fleet limit, with its per-caller buckets (local, in this proxy) and the
    local bucket ``on_redis_failure: open`` falls back to (implements ``pipeline.RateLimiter``).
    """

    def __init__(
        self,
        namespace: str,
        limit: RateLimitConfig,
        redis: FleetRedis,
        metrics: NamespaceMetrics,
        per_caller: CallerRateLimitConfig | None = None,
    ) -> None:
        self._namespace = namespace
        self._redis = redis
        self._key = redis.config.key_prefix + namespace
        self._rate = limit.rate
        burst = bucket_size(limit)
        self._interval = 1e6 / limit.rate  # µs a token
        self._capacity = burst * self._interval
        self._max_batch = max(1, min(limit.max_batch, int(burst)))
        self._max_wait = limit.max_wait
        self._closed = limit.on_redis_failure == "closed"
        self._rejected = metrics.rate_limited
        self._callers = (
            TokenBuckets(namespace, metrics.rate_limited, per_caller=per_caller)
            if per_caller is not None
            else None
        )
        fallback = RateLimitConfig(rate=limit.fallback_rate or limit.rate, burst=limit.burst)
        self._fallback = TokenBuckets(namespace, metrics.rate_limited, shared=fallback)
        self._fallbacks = metrics.fleet_fallbacks("closed" if self._closed else "open")
        self._redis_calls = metrics.fleet_redis_calls
        self._tokens = metrics.fleet_tokens
        #: Tokens taken from Redis and not spent yet.
        self.stock = 0
        self._batch = 1
        self._refilling = False
        self._refilled = trio.Event()
        self._retry_at = -math.inf  # Redis said: no batch before this (Trio's clock)
        self._waiting = 0
        self._spent = 0  # since _since: this proxy's observed rate
        self._since: float | None = None
        self._observed = 0.0

    def check(self, info: RequestInfo) -> bool:
        """A token in hand (True), a refusal while Redis said the bucket is empty, or False:
        :meth:`wait_for_token` asks Redis."""
        if self._callers is not None:
            self._callers.check(info)  # the caller's own limit first: it never costs the fleet
        if self.stock >= 1:
            self._spend()
            return True
        if not self._redis.up:
            self._without_redis(info)
            return True
        now = trio.current_time()
        if now < self._retry_at:
            self._refuse(info, self._retry_at - now)
        return False

    async def wait_for_token(self, info: RequestInfo) -> None:
        """Wait for the refill in flight (or start one), at most ``max_wait``; then a token,
        a refusal, or ``on_redis_failure``. Cancellation: the caller's token is given back."""
        deadline = trio.current_time() + self._max_wait
        self._waiting += 1
        try:
            while True:
                if self.stock >= 1:
                    self._spend()
                    return
                if not self._redis.up:
                    self._without_redis(info)
                    return
                now = trio.current_time()
                if now < self._retry_at:
                    self._refuse(info, self._retry_at - now)
                if now >= deadline:  # Redis is slow: this call cannot wait for it
                    self._without_redis(info)
                    return
                if not self._refilling:
                    self._start_refill()
                refilled = self._refilled
                with trio.move_on_at(deadline):
                    await refilled.wait()
        except trio.Cancelled:
            self._give_back(info)
            raise
        finally:
            self._waiting -= 1

    def _spend(self) -> None:
        self.stock -= 1
        self._spent += 1
        if self.stock <= self._batch // 4 and not self._refilling and self._redis.up:
            # The next batch, before this one runs out: a quarter of a batch is ~12 ms of
            # this proxy's calls, a Redis round trip ~1 ms.
            self._start_refill()

    def _start_refill(self) -> None:
        self._refilling = True
        self._redis.start_soon(self._refill)

    async def _refill(self) -> None:
        try:
            batch = self._batch = self._next_batch()
            want = max(batch, min(self._waiting, self._max_batch)) - self.stock
            if want < 1:
                return
            granted, wait = await self._redis.take(self._key, self._interval, self._capacity, want)
            self._redis_calls.value += 1
            self._tokens.value += granted
            self.stock += granted
            if not granted:
                # Come back when a batch could be free, not for every token that frees up:
                # while the fleet is over its limit, Redis is asked once per batch, not per call.
                pause = wait + (batch - 1) * self._interval / 1e6
                self._retry_at = trio.current_time() + pause
        except RedisDown:
            pass
        finally:
            self._refilling = False
            refilled, self._refilled = self._refilled, trio.Event()
            refilled.set()

    def _next_batch(self) -> int:
        """About ``LEAD`` seconds of this proxy's calls (its rate since the last refill,
        smoothed), within [1, max_batch]."""
        now = trio.current_time()
        since, self._since = self._since, now
        if since is not None and now > since:
            rate = self._spent / (now - since)
            self._observed = (self._observed + rate) / 2 if self._observed else rate
        self._spent = 0
        return max(1, min(self._max_batch, math.ceil(self._observed * LEAD)))

    def _without_redis(self, info: RequestInfo) -> None:
        self._fallbacks.value += 1
        if self._closed:
            self._give_back(info)
            self._rejected.value += 1
            raise ResourceExhausted(
                f"rate limit of namespace {self._namespace!r} unavailable: the fleet limit's "
                "Redis does not answer (on_redis_failure: closed)"
            )
        try:
            self._fallback.check(info)
        except ResourceExhausted:
            self._give_back(info)
            raise

    def _refuse(self, info: RequestInfo, wait: float) -> None:
        self._give_back(info)
        self._rejected.value += 1
        raise refusal(self._namespace, "fleet", self._rate, wait)

    def _give_back(self, info: RequestInfo) -> None:
        if self._callers is not None:
            self._callers.give_back(info)
