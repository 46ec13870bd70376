"""The concurrency limit stage: a cap of calls in flight per namespace, a bounded wait queue.

Unary calls and streams have caps of their own (``max_in_flight``, ``max_streams``): a
subscription holds its permit for as long as it lasts and must not starve unary calls. A call
that finds no free permit waits in its cap's queue, first come first served, for at most
``queue_timeout`` seconds; with ``max_queue`` calls already waiting it is refused at once
(RESOURCE_EXHAUSTED, ``queue_full``), and one that waited too long too (``queue_timeout``).
Refusing fast is the point: under a flood the plugin sees at most the cap, so a bystander's
call waits behind ``max_in_flight`` calls at most, not behind everything that arrived.

A released permit goes straight to the first waiter (the count of calls in flight does not
change), so a call arriving meanwhile cannot overtake the queue. The fast path
(:meth:`ConcurrencyLimit.try_acquire`) is a comparison and an increment: no coroutine, no
checkpoint.
"""

from __future__ import annotations

import trio

from prism.config.traffic import ConcurrencyConfig
from prism.grpc.wire.status import ResourceExhausted
from prism.proxy.metrics import NamespaceMetrics
from prism.proxy.request import RequestInfo

__all__ = ["ConcurrencyLimit", "Permits"]


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


class Permits:
    """One cap: ``limit`` permits and a queue of at most ``max_queue`` waiters."""

    def __init__(self, limit: int | None, max_queue: int) -> None:
        self.limit = limit
        self.max_queue = max_queue
        #: Permits taken now.
        self.taken = 0
        # Insertion-ordered: the first key is the longest waiter; removing one is O(1).
        self.waiters: dict[_Waiter, None] = {}

    def try_take(self) -> bool:
        limit = self.limit
        if limit is None:
            return True
        if self.taken < limit and not self.waiters:
            self.taken += 1
            return True
        return False

    async def take(self) -> None:
        """Wait in the queue until a permit is handed over. Cancelled (the queue timeout, the
        call's deadline, the client's reset): the waiter leaves the queue, and a permit handed
        to it meanwhile goes on to the next one."""
        waiter = _Waiter()
        self.waiters[waiter] = None
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.give()
            else:
                del self.waiters[waiter]
            raise

    def give(self) -> None:
        """A permit is back: the first waiter gets it, else it is free."""
        if self.limit is None:
            return
        waiters = self.waiters
        if waiters:
            waiter = next(iter(waiters))
            del waiters[waiter]
            waiter.granted = True
            waiter.event.set()
            return
        self.taken -= 1


class ConcurrencyLimit:
    """The concurrency limit of one namespace (implements ``pipeline.ConcurrencyLimiter``)."""

    def __init__(self, namespace: str, config: ConcurrencyConfig, metrics: NamespaceMetrics):
        self._namespace = namespace
        self.queue_timeout = config.queue_timeout
        self.unary = Permits(config.max_in_flight, config.max_queue)
        self.streams = Permits(config.max_streams, config.max_queue)
        self._queue_wait = metrics.queue_wait
        self._queue_full = metrics.queue_full
        self._queue_timed_out = metrics.queue_timeout

    def try_acquire(self, info: RequestInfo) -> bool:
        if (self.streams if info.stream else self.unary).try_take():
            self._queue_wait.observe(0.0)
            return True
        return False

    async def acquire(self, info: RequestInfo) -> None:
        """Wait in the queue for a permit, or raise ResourceExhausted (``queue_full`` at once,
        ``queue_timeout`` after ``queue_timeout`` s). Cancellation leaves no permit taken."""
        permits = self.streams if info.stream else self.unary
        kind = "streams" if info.stream else "calls"
        if len(permits.waiters) >= permits.max_queue:
            self._queue_full.value += 1
            raise ResourceExhausted(
                f"namespace {self._namespace!r} is at its limit of {permits.limit} {kind} in "
                f"flight and {permits.max_queue} waiting (queue full)"
            )
        started = trio.current_time()
        granted = False
        with trio.move_on_after(self.queue_timeout):
            await permits.take()
            granted = True
        if not granted:
            self._queue_timed_out.value += 1
            raise ResourceExhausted(
                f"namespace {self._namespace!r} is at its limit of {permits.limit} {kind} in "
                f"flight: no permit within {self.queue_timeout:g} s (queue timeout)"
            )
        self._queue_wait.observe(trio.current_time() - started)

    def release(self, info: RequestInfo) -> None:
        (self.streams if info.stream else self.unary).give()
