"""The admin API (``prism.admin.v1.Admin``): namespace status and hot reload over the host.

It has no authentication: :class:`prism.proxy.app.Proxy` serves it on the admin port
(:mod:`prism.proxy.adminport`, beside the admin HTTP routes), on loopback or a 0600 Unix socket
only (see ``AdminConfig``), never on the front door.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    GetNamespaceRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    NamespaceStatus,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism._proto.prism.plugin.v1 import PluginMetrics
from prism.hosting.host import NamespaceRoute, PluginHost, PluginStartFailed

log = logging.getLogger("prism.admin")

MetricsLookup = Callable[[str], PluginMetrics | None]
"""namespace → the latest metrics collected from its plugin, or None."""


def _no_metrics(namespace: str) -> PluginMetrics | None:
    return None


class AdminService(pg.Service):
    """``metrics`` is where the latest collected plugin metrics are looked up. Listing never
    fetches them from the plugin itself: a fetch resets the plugin's interval counters, which
    belong to whoever collects them."""

    name = "prism.admin.v1.Admin"

    def __init__(self, host: PluginHost, metrics: MetricsLookup = _no_metrics) -> None:
        self.host = host
        self.metrics = metrics

    def status(self, route: NamespaceRoute) -> NamespaceStatus:
        ns = route.config
        instance = route.current
        status = NamespaceStatus(name=ns.name, plugin=ns.plugin.name, mode=ns.plugin.mode)
        if instance is None:
            status.unavailable_reason = "no instance"
        else:
            status.generation = instance.generation
            status.available = instance.available
            status.unavailable_reason = "" if instance.available else instance.down_reason
            status.in_flight = instance.in_flight
            status.last_health = instance.health
        status.metrics = self.metrics(ns.name)
        return status

    @pg.unary_unary("ListNamespaces", ListNamespacesRequest, ListNamespacesResponse)
    async def list_namespaces(
        self, request: ListNamespacesRequest, call: pg.ServerCall
    ) -> ListNamespacesResponse:
        return ListNamespacesResponse(
            namespaces=[self.status(route) for route in self.host.routes.values()]
        )

    @pg.unary_unary("GetNamespace", GetNamespaceRequest, NamespaceStatus)
    async def get_namespace(
        self, request: GetNamespaceRequest, call: pg.ServerCall
    ) -> NamespaceStatus:
        return self.status(self.host.route(request.name))  # NotFound for an unknown name

    @pg.unary_unary("ReloadNamespace", ReloadNamespaceRequest, ReloadNamespaceResponse)
    async def reload_namespace(
        self, request: ReloadNamespaceRequest, call: pg.ServerCall
    ) -> ReloadNamespaceResponse:
        """Cancellation (the client's deadline or disconnect) cancels ``host.reload`` wherever
        it is: before the route switch the new instance is abandoned and the old one keeps
        serving; after it, the old instance's drain is cut short."""
        route = self.host.route(request.namespace)
        log.info(
            "admin: reload of namespace %r requested via %s", request.namespace, call.peer.address
        )
        started = trio.current_time()
        try:
            # The host serializes reloads of one namespace (its route's lock), so concurrent
            # requests queue here; the duration includes that wait.
            instance = await self.host.reload(request.namespace)
        except PluginStartFailed as exc:
            log.warning("admin: reload of namespace %r failed: %s", request.namespace, exc)
            raise pg.FailedPrecondition(
                f"reload failed; the previous instance keeps serving: {exc}"
            ) from None
        return ReloadNamespaceResponse(
            generation=instance.generation,
            duration_seconds=trio.current_time() - started,
            namespace=self.status(route),
        )
