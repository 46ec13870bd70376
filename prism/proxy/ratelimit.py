"""The rate limit stage: token buckets per namespace and per caller.

A namespace may have one bucket shared by every caller (``traffic.rate_limit``) and one bucket
per caller (``traffic.caller_rate_limit``), keyed by the identity's subject. The per-caller
buckets live in an LRU of at most ``max_callers`` entries: a client inventing subjects (one per
token it mints) pushes the least recently seen callers out instead of growing memory; a caller
pushed out comes back with a full bucket, and the namespace's own bucket still bounds the total.

A call over a limit gets RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` (when a token
will be there) in ``grpc-status-details-bin``: a ``google.rpc.Status`` whose code and message
are the call's own, which is how the gRPC ecosystem carries rich errors (grpcio-status'
``rpc_status.from_call`` reads it). The Status is written here with :mod:`prism.protowire`
(four small messages; betterproto2 would cost ~25 µs a message on a path meant to be cheap).

Buckets refill from ``trio.current_time()``: no task, no timer, and Trio's MockClock drives them
in tests.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import trio

from prism import protowire
from prism.config.traffic import BucketConfig, CallerRateLimitConfig, RateLimitConfig
from prism.grpc.wire.status import ResourceExhausted, Status
from prism.proxy.metrics import Counter
from prism.proxy.request import RequestInfo

__all__ = [
    "STATUS_DETAILS",
    "Bucket",
    "TokenBuckets",
    "bucket_size",
    "refusal",
    "retry_status_details",
]

#: The trailer that carries a google.rpc.Status (binary: base64 on the wire).
STATUS_DETAILS = "grpc-status-details-bin"
_RETRY_INFO_URL = b"type.googleapis.com/google.rpc.RetryInfo"


def _length_delimited(number: int, value: bytes) -> bytes:
    return protowire.encode_varint(number << 3 | 2) + protowire.encode_varint(len(value)) + value


def retry_status_details(status: Status, message: str, delay: float) -> bytes:
    """A ``google.rpc.Status`` (code, message, one ``RetryInfo`` detail of ``delay`` seconds)
    as bytes, for the ``grpc-status-details-bin`` trailer."""
    seconds = int(delay)
    nanos = min(round((delay - seconds) * 1e9), 999_999_999)
    duration = b""
    if seconds:
        duration += b"\x08" + protowire.encode_varint(seconds)
    if nanos:
        duration += b"\x10" + protowire.encode_varint(nanos)
    retry_info = _length_delimited(1, duration)  # RetryInfo.retry_delay
    detail = _length_delimited(1, _RETRY_INFO_URL) + _length_delimited(2, retry_info)  # Any
    out = b""
    if status:
        out += b"\x08" + protowire.encode_varint(int(status))
    if message:
        out += _length_delimited(2, message.encode())
    return out + _length_delimited(3, detail)


class Bucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``; full at ``now`` (and at any
    time after ``-inf``)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def give_back(self) -> None:
        self.tokens = min(self.tokens + 1.0, self.burst)


def bucket_size(limit: BucketConfig) -> float:
    """The bucket's size: ``burst``, or the rate rounded up (at least 1)."""
    return float(limit.burst if limit.burst is not None else max(1, math.ceil(limit.rate)))


class TokenBuckets:
    """The rate limit of one namespace (implements ``pipeline.RateLimiter``)."""

    def __init__(
        self,
        namespace: str,
        rejected: Counter,
        shared: RateLimitConfig | None = None,
        per_caller: CallerRateLimitConfig | None = None,
    ) -> None:
        self._namespace = namespace
        self._rejected = rejected
        # Full from the start; no clock read here (stages may be built outside trio.run).
        self._shared = (
            Bucket(shared.rate, bucket_size(shared), -math.inf) if shared is not None else None
        )
        self._caller_limit = per_caller
        self._caller_burst = bucket_size(per_caller) if per_caller is not None else 0.0
        self._callers: OrderedDict[str, Bucket] = OrderedDict()

    @property
    def callers(self) -> int:
        """Callers whose buckets are kept now (at most ``max_callers``)."""
        return len(self._callers)

    def check(self, info: RequestInfo) -> bool:
        """Take a token from the caller's bucket and the namespace's (True), or raise
        ResourceExhausted with the delay after which both will have one."""
        now = trio.current_time()
        caller: Bucket | None = None
        limit = self._caller_limit
        if limit is not None:
            subject = info.identity.subject if info.identity is not None else ""
            callers = self._callers
            caller = callers.get(subject)
            if caller is None:
                caller = callers[subject] = Bucket(limit.rate, self._caller_burst, now)
                if len(callers) > limit.max_callers:
                    callers.popitem(last=False)
            else:
                callers.move_to_end(subject)
            wait = caller.take(now)
            if wait:
                self._refuse("caller", limit.rate, wait)
        shared = self._shared
        if shared is not None:
            wait = shared.take(now)
            if wait:
                if caller is not None:
                    caller.give_back()  # the call did not happen: not the caller's to pay
                self._refuse("namespace", shared.rate, wait)
        return True

    async def wait_for_token(self, info: RequestInfo) -> None:  # never called: check decides
        await trio.lowlevel.checkpoint()

    def give_back(self, info: RequestInfo) -> None:
        """The call that took a token from its caller's bucket was refused by a later limit
        (the fleet's): the caller does not pay for it."""
        if self._caller_limit is None:
            return
        caller = self._callers.get(info.identity.subject if info.identity is not None else "")
        if caller is not None:
            caller.give_back()

    def _refuse(self, which: str, rate: float, wait: float) -> None:
        self._rejected.value += 1
        raise refusal(self._namespace, which, rate, wait)


def refusal(namespace: str, which: str, rate: float, wait: float) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a call over ``which`` limit of ``rate`` calls/s, with a
    ``google.rpc.RetryInfo`` of ``wait`` seconds."""
    message = (
        f"rate limit exceeded for namespace {namespace!r} "
        f"({which} limit: {rate:g} calls/s); retry in {wait:.3g} s"
    )
    details = retry_status_details(Status.RESOURCE_EXHAUSTED, message, wait)
    return ResourceExhausted(message, trailers=[(STATUS_DETAILS, details)])
