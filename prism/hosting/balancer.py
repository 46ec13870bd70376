"""A remote plugin with several endpoints (``plugin.endpoints``): each call goes to one of them.

Every endpoint is a plugin instance of its own (:class:`EndpointInstance`): its own channel,
session, Initialize, health loop, metrics poller and reconnection loop (the remote model runs
one :func:`~prism.hosting.supervisor.supervise` per endpoint). The :class:`Balancer` is the
namespace instance's client: the namespace serves while any endpoint does.

Choosing: *power of two choices on the fewest calls in flight*. Two endpoints are drawn at
random among the healthy, non-ejected ones and the call goes to the one with fewer calls
outstanding. Least-outstanding-requests follows each endpoint's actual speed (a slow or
overloaded endpoint holds its calls longer and gets fewer new ones), and drawing two rather
than scanning all avoids herding every call onto the one endpoint that looked least loaded a
moment ago. With no healthy endpoint left outside ejection, healthy ejected ones are used
(Envoy's panic mode: serving beats failing).

Failures feed outlier ejection (:mod:`prism.hosting.outlier`). Retries: a call is retried once,
on another endpoint, only when it failed before it was sent (no connection to its endpoint could
be made: refused, closed, TLS): such a call cannot have reached the plugin, so the retry cannot
duplicate a write. A call that may have reached the plugin (connection lost mid-call, an
UNAVAILABLE answer, a deadline) is never retried.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import trio

from prism._proto.prism.plugin.v1 import (
    HealthCheckResponse,
    InitializeRequest,
    InitializeResponse,
    PluginMetrics,
    ShutdownResponse,
)
from prism.config import OutlierConfig
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, Status, Unavailable
from prism.hosting.client import GrpcClient, PluginClient, ReceiveBytes, SendBytes
from prism.hosting.instance import Instance
from prism.hosting.outlier import OutlierDetector, OutlierState

log = logging.getLogger("prism.hosting")

__all__ = ["FAILURES", "Balancer", "EndpointInstance"]

#: Answers that count as the endpoint failing (any other answer is the plugin serving).
FAILURES = frozenset({Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED})


class EndpointInstance(Instance):
    """One endpoint's plugin instance. Its metrics polls count for the namespace (the events),
    and the namespace instance's latest interval is every endpoint's latest, summed."""

    def __init__(self, parent: Instance, address: str, balancer: Balancer) -> None:
        super().__init__(
            parent.namespace, parent.mode, parent.generation, balancer.changed, parent.events
        )
        self.parent = parent
        self.balancer = balancer
        self.address = address
        self.outlier = OutlierState()
        self.series = parent.events.endpoint_series(parent.namespace, address)

    def record_metrics(self, metrics: PluginMetrics) -> None:
        super().record_metrics(metrics)
        endpoints = self.balancer.endpoints
        self.parent.metrics = merge_metrics([e.metrics for e in endpoints if e.metrics is not None])
        self.parent.totals.add(metrics)


class Balancer(PluginClient):
    """The namespace instance's client over its endpoints (module docstring)."""

    def __init__(self, parent: Instance, addresses: Sequence[str], config: OutlierConfig) -> None:
        self.parent = parent
        self.endpoints = [EndpointInstance(parent, address, self) for address in addresses]
        self.detector = OutlierDetector(config, [e.outlier for e in self.endpoints])
        self._eligible: list[EndpointInstance] = []
        self._random = random.Random()
        self._wake = trio.Event()

    # -- the routing set ----------------------------------------------------------------------

    def changed(self, instance: Instance) -> None:
        """An endpoint went up or down (its supervisor's doing)."""
        assert isinstance(instance, EndpointInstance)
        if instance.available and self.detector.due(instance.outlier):
            self._readmit(instance)
        self._refresh()

    def _refresh(self) -> None:
        up = [e for e in self.endpoints if e.available]
        self._eligible = [e for e in up if not e.outlier.ejected] or up
        if not up:
            reasons = "; ".join(f"{e.address}: {e.down_reason}" for e in self.endpoints)
            self.parent.down(f"no endpoint of the remote plugin is serving ({reasons})")
            return
        first = up[0].client
        assert first is not None
        self.plugin_version = first.plugin_version
        self.supported_operations = first.supported_operations
        self.parent.up(self, up[0].health)

    def _readmit(self, endpoint: EndpointInstance) -> None:
        self.detector.readmit(endpoint.outlier)
        endpoint.series.ejected.set(0)
        log.warning(
            "namespace %r: endpoint %s re-admitted to balancing",
            endpoint.namespace,
            endpoint.address,
        )

    async def run(self) -> None:
        """Re-admit ejected endpoints whose time is up and that are healthy (those that are not
        are re-admitted when they come up: :meth:`changed`). Runs until cancelled."""
        while True:
            now = trio.current_time()
            pending = math.inf
            for endpoint in self.endpoints:
                state = endpoint.outlier
                if not state.ejected:
                    continue
                if state.ejected_until > now:
                    pending = min(pending, state.ejected_until)
                elif endpoint.available:
                    self._readmit(endpoint)
                    self._refresh()
            self._wake = trio.Event()
            with trio.move_on_at(pending):
                await self._wake.wait()

    # -- outcomes -------------------------------------------------------------------------------

    def failed(self, endpoint: EndpointInstance) -> None:
        """One failure of ``endpoint``: a call's, or a connection attempt's (the remote model's)."""
        endpoint.series.failures.inc()
        state = endpoint.outlier
        if self.detector.failure(state):
            endpoint.series.ejections.inc()
            endpoint.series.ejected.set(1)
            log.warning(
                "namespace %r: endpoint %s ejected from balancing for %.3g s after %d failures "
                "in a row (ejection %d)",
                endpoint.namespace,
                endpoint.address,
                state.ejected_until - trio.current_time(),
                state.consecutive,
                state.ejections,
            )
            self._refresh()
            self._wake.set()
        elif state.consecutive == self.detector.config.consecutive_failures and not state.ejected:
            log.warning(
                "namespace %r: endpoint %s failed %d times in a row but is not ejected: %d of "
                "%d endpoints are (max_ejection_percent)",
                endpoint.namespace,
                endpoint.address,
                state.consecutive,
                self.detector.ejected_count,
                len(self.endpoints),
            )

    def _outcome(self, endpoint: EndpointInstance, exc: GrpcError) -> None:
        if exc.status in FAILURES:
            self.failed(endpoint)
        else:
            self.detector.success(endpoint.outlier)

    # -- choosing -------------------------------------------------------------------------------

    def _pick(self, exclude: EndpointInstance | None = None) -> EndpointInstance | None:
        choices = self._eligible
        if exclude is not None:
            choices = [e for e in choices if e is not exclude]
        n = len(choices)
        if n <= 1:
            return choices[0] if choices else None
        i = self._random.randrange(n)
        j = self._random.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = choices[i], choices[j]
        return a if a.in_flight <= b.in_flight else b

    async def _enter(self, *, stream: bool) -> EndpointInstance:
        """An endpoint with a live connection, the call counted in on it; retried once on
        another endpoint when the first cannot be connected to (the call was not sent)."""
        endpoint = self._pick()
        if endpoint is None:
            raise Unavailable(
                f"the plugin for namespace {self.parent.namespace!r} is unavailable "
                f"({self.parent.down_reason})"
            )
        try:
            await self._connected(endpoint, stream=stream)
        except GrpcError:
            retry = self._pick(exclude=endpoint)
            if retry is None:
                raise
            await self._connected(retry, stream=stream)
            return retry
        return endpoint

    async def _connected(self, endpoint: EndpointInstance, *, stream: bool) -> None:
        endpoint.series.requests.inc()
        client = endpoint.enter(stream=stream)
        try:
            if isinstance(client, GrpcClient):
                await client.channel.connection()
        except GrpcError:
            endpoint.leave(stream=stream)
            self.failed(endpoint)
            raise

    # -- PluginClient ---------------------------------------------------------------------------

    async def execute(self, request: bytes | Pieces) -> bytes | Pieces:
        """Cancellation (the caller's deadline, its reset) cancels the plugin's call; one that
        ends at the deadline counts as a failure of the endpoint (DEADLINE_EXCEEDED)."""
        deadline = trio.current_effective_deadline()
        endpoint = await self._enter(stream=False)
        try:
            client = endpoint.client
            if client is None:  # it went down while connecting
                raise Unavailable(f"endpoint {endpoint.address} went down: {endpoint.down_reason}")
            response = await client.execute(request)
        except GrpcError as exc:
            self._outcome(endpoint, exc)
            raise
        except trio.Cancelled:
            if trio.current_time() >= deadline:
                self.failed(endpoint)
            raise
        finally:
            endpoint.leave()
        self.detector.success(endpoint.outlier)
        return response

    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None:
        endpoint = await self._enter(stream=True)
        try:
            client = endpoint.client
            if client is None:
                raise Unavailable(f"endpoint {endpoint.address} went down: {endpoint.down_reason}")
            await client.execute_stream(receive, send)
        except GrpcError as exc:
            self._outcome(endpoint, exc)
            raise
        finally:
            endpoint.leave(stream=True)
        self.detector.success(endpoint.outlier)

    async def initialize(self, request: InitializeRequest) -> InitializeResponse:
        raise RuntimeError("each endpoint of a balanced remote plugin initializes its own session")

    async def health_check(self) -> HealthCheckResponse:
        endpoint = self._pick()
        client = None if endpoint is None else endpoint.client
        if client is None:
            raise Unavailable(f"namespace {self.parent.namespace!r}: no endpoint is serving")
        return await client.health_check()

    async def metrics(self) -> PluginMetrics:
        """Every serving endpoint's interval, summed (their pollers' intervals: see
        ``Instance.poll_metrics``)."""
        parts: list[PluginMetrics] = []
        for endpoint in self.endpoints:
            client = endpoint.client
            if client is not None:
                try:
                    parts.append(await client.metrics())
                except GrpcError as exc:
                    log.debug("endpoint %s: metrics fetch failed: %s", endpoint.address, exc)
        return merge_metrics(parts)

    async def shutdown(self, grace: float, reason: str) -> ShutdownResponse:
        """Shutdown to every serving endpoint at once; their supervisors stop with it."""
        responses: list[ShutdownResponse] = []

        async def one(endpoint: EndpointInstance, client: PluginClient) -> None:
            try:
                responses.append(await client.shutdown(grace, reason))
            except GrpcError as exc:
                log.info("Shutdown of endpoint %s failed: %s", endpoint.address, exc)

        async with trio.open_nursery() as nursery:
            for endpoint in self.endpoints:
                endpoint.retiring = True
                if endpoint.client is not None:
                    nursery.start_soon(one, endpoint, endpoint.client)
        return responses[0] if responses else ShutdownResponse()


def merge_metrics(parts: Sequence[PluginMetrics]) -> PluginMetrics:
    """Several endpoints' intervals as one: counts summed, latency weighted by requests, the
    earliest start."""
    requests = sum(p.requests_total for p in parts)
    latency = (
        sum(p.latency_ms * p.requests_total for p in parts) / requests
        if requests
        else max((p.latency_ms for p in parts), default=0.0)
    )
    starts = [p.interval_start_ns for p in parts if p.interval_start_ns > 0]
    return PluginMetrics(
        requests_total=requests,
        requests_failed=sum(p.requests_failed for p in parts),
        latency_ms=latency,
        connections_active=sum(p.connections_active for p in parts),
        cache_hits=sum(p.cache_hits for p in parts),
        cache_misses=sum(p.cache_misses for p in parts),
        interval_start_ns=min(starts, default=0),
    )
