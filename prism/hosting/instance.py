"""One plugin instance as routes see it, and a namespace's route to its current instance.

:class:`Instance` counts the calls running on it (so a reload can drain it), says whether it is
routed to (callers get UNAVAILABLE at once while it is not, with the reason), and keeps what the
host learned about it: its last health answer, its sidecar's pid, its plugin metrics.

An instance is routed to only while its plugin is Initialized and its last health answer was
HEALTHY or DEGRADED: UNHEALTHY, a health check that is not answered in time, a crash or an
unreachable remote take it out of routing (:meth:`Instance.down`) until the supervisor has it
serving again (:meth:`Instance.up`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from prism._proto.prism.plugin.v1 import HealthCheckResponse, PluginMetrics
from prism.config import NamespaceConfig
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import Unavailable
from prism.hosting.client import PluginClient

log = logging.getLogger("prism.hosting")

ReceiveBytes = Callable[[], Awaitable[bytes | Pieces | None]]
SendBytes = Callable[[bytes | Pieces], Awaitable[None]]


class Count(Protocol):
    def inc(self, amount: float = 1.0) -> None: ...


class Level(Protocol):
    def set(self, value: float) -> None: ...


class _Tally:
    """A count or level nobody reads (a host without metrics)."""

    def inc(self, amount: float = 1.0) -> None:
        pass

    def set(self, value: float) -> None:
        pass


@dataclass(frozen=True)
class EndpointSeries:
    """One endpoint of a balanced remote plugin, as the proxy's metrics count it (updated on
    the call path: plain in-place numbers, see ``prism.proxy.metrics``)."""

    requests: Count
    failures: Count
    ejections: Count
    ejected: Level


def no_endpoint_series() -> EndpointSeries:
    tally = _Tally()
    return EndpointSeries(tally, tally, tally, tally)


class HostEvents(Protocol):
    """What the plugin host reports as it happens, to whoever counts it (the proxy's metrics:
    ``prism.proxy.metrics.ProxyMetrics`` has these methods). Called synchronously on Trio's
    thread: they must not block or raise."""

    def plugin_polled(self, namespace: str, interval: PluginMetrics, received_ns: int) -> None:
        """One poll of the plugin's interval metrics, received at wall-clock ``received_ns``
        (each interval is reported once)."""

    def plugin_restarted(self, namespace: str) -> None:
        """An instance is being started again after a failure."""

    def plugin_reloaded(self, namespace: str, ok: bool) -> None:
        """A hot reload ended: ``ok``, or failed (the old instance kept serving)."""

    def endpoint_series(self, namespace: str, endpoint: str) -> EndpointSeries:
        """Where one endpoint of a balanced remote plugin counts its calls, failures and
        ejections (asked once per endpoint, when its instance starts)."""


class NoEvents:
    def plugin_polled(self, namespace: str, interval: PluginMetrics, received_ns: int) -> None:
        pass

    def plugin_restarted(self, namespace: str) -> None:
        pass

    def plugin_reloaded(self, namespace: str, ok: bool) -> None:
        pass

    def endpoint_series(self, namespace: str, endpoint: str) -> EndpointSeries:
        return no_endpoint_series()


@dataclass
class MetricsTotals:
    """Cumulative plugin metrics as the proxy collected them, interval by interval."""

    polls: int = 0
    requests_total: int = 0
    requests_failed: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    def add(self, interval: PluginMetrics) -> None:
        self.polls += 1
        self.requests_total += interval.requests_total
        self.requests_failed += interval.requests_failed
        self.cache_hits += interval.cache_hits
        self.cache_misses += interval.cache_misses


class Instance:
    """One running plugin instance, as routes see it."""

    def __init__(
        self,
        namespace: str,
        mode: str,
        generation: int,
        on_change: Callable[[Instance], None] | None = None,
        events: HostEvents | None = None,
    ) -> None:
        """``on_change`` is called (synchronously, never dropped) whenever the instance goes up
        or down: the host reports the namespace's health from it. ``events`` hears of its
        metrics polls and restarts."""
        self.namespace = namespace
        self.events: HostEvents = events if events is not None else NoEvents()
        self.mode = mode
        self.generation = generation
        self.client: PluginClient | None = None
        self.down_reason = "starting"
        self._down_since: float | None = None  # when it went down after having served
        self._on_change = on_change
        self.scope = trio.CancelScope()
        #: Set once the instance's scope has exited: its process reaped, its channel closed.
        self.stopped = trio.Event()
        self.in_flight = 0  # calls running on this instance, streams included
        self._unary_in_flight = 0
        self.draining = False
        self.retiring = False  # Shutdown sent or about to be: its process's exit is expected
        self._idle = trio.Event()
        self.health: HealthCheckResponse | None = None
        self.pid: int | None = None  # a sidecar's process id while it runs
        self.address: str | None = None  # where a sidecar or remote plugin is reached
        self.restarts = 0
        #: The plugin's metrics of the last poll's interval, and the sums over every poll.
        self.metrics: PluginMetrics | None = None
        self.totals = MetricsTotals()

    @property
    def unary_in_flight(self) -> int:
        """The unary calls running on this instance (what a reload's drain waits for)."""
        return self._unary_in_flight

    @property
    def available(self) -> bool:
        return self.client is not None

    def up(self, client: PluginClient, health: HealthCheckResponse | None = None) -> None:
        """Route to ``client`` (its plugin is Initialized and answered ``health``)."""
        was_down = self.client is None
        self.client = client
        if health is not None:
            self.health = health
        if was_down and self._down_since is not None:
            log.warning(
                "namespace %r is serving again after %.3f s down (%s; instance %d)",
                self.namespace,
                trio.current_time() - self._down_since,
                self.down_reason,
                self.generation,
            )
            self._down_since = None
        if was_down and self._on_change is not None:
            self._on_change(self)

    def down(self, reason: str) -> None:
        """Stop routing to the plugin: calls get UNAVAILABLE with ``reason`` until :meth:`up`."""
        was_up = self.client is not None
        self.client = None
        self.down_reason = reason
        if was_up:
            self._down_since = trio.current_time()
        if self._on_change is not None:
            self._on_change(self)

    def record_metrics(self, metrics: PluginMetrics) -> None:
        self.metrics = metrics
        self.totals.add(metrics)
        self.events.plugin_polled(self.namespace, metrics, time.time_ns())

    def restarted(self) -> None:
        """The supervisor starts this instance's plugin again after a failure."""
        self.restarts += 1
        self.events.plugin_restarted(self.namespace)

    async def poll_metrics(self) -> PluginMetrics | None:
        """Fetch the plugin's interval metrics (which resets them) into :attr:`metrics` and
        :attr:`totals`; None while the instance is down. The host's poller calls this every
        ``health_interval``; a second caller would steal part of its intervals."""
        client = self.client
        if client is None:
            return None
        metrics = await client.metrics()
        self.record_metrics(metrics)
        return metrics

    @asynccontextmanager
    async def track(self, *, stream: bool = False) -> AsyncIterator[PluginClient]:
        client = self.enter(stream=stream)
        try:
            yield client
        finally:
            self.leave(stream=stream)

    def enter(self, *, stream: bool = False) -> PluginClient:
        """:meth:`track` without a context manager (the unary hot path): count a call in;
        :meth:`leave` counts it out."""
        client = self.client
        if client is None:
            raise Unavailable(
                f"the plugin for namespace {self.namespace!r} is unavailable ({self.down_reason})"
            )
        self.in_flight += 1
        if not stream:
            self._unary_in_flight += 1
        return client

    def leave(self, *, stream: bool = False) -> None:
        self.in_flight -= 1
        if not stream:
            self._unary_in_flight -= 1
            if self._unary_in_flight == 0 and self.draining:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` s for in-flight unary calls; True when all of them finished.

        Streams are not waited for: subscriptions and the like may never end on their own. The
        plugin ends them at Shutdown (``begin_shutdown``), and their clients open new ones,
        which reach the new instance."""
        self.draining = True
        if self._unary_in_flight == 0:
            return True
        with trio.move_on_after(grace):
            await self._idle.wait()
        return self._unary_in_flight == 0


class NamespaceRoute:
    """A namespace's route: forwards to whichever instance is current. (The front door's
    ``frontdoor.Route`` is the protocol this implements.)"""

    def __init__(self, config: NamespaceConfig) -> None:
        self.config = config
        self.current: Instance | None = None
        self.reload_lock = trio.Lock()
        #: Why an operator stopped the namespace (PluginHost.disable); None while enabled.
        self.disabled: str | None = None

    def _instance(self) -> Instance:
        instance = self.current
        if instance is None:
            if self.disabled is not None:
                raise Unavailable(f"namespace {self.config.name!r} is {self.disabled}")
            raise Unavailable(f"namespace {self.config.name!r} has no running plugin")
        return instance

    async def execute(self, request: bytes | Pieces) -> bytes | Pieces:
        instance = self._instance()
        client = instance.enter()  # track(), without a context manager per call
        try:
            return await client.execute(request)
        finally:
            instance.leave()

    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None:
        async with self._instance().track(stream=True) as client:
            await client.execute_stream(receive, send)
