"""The admin API (``prism.admin.v1.Admin``): namespace status, hot reload, enable/disable and
config reload, over the plugin host.

:class:`AdminActions` is what the API does, once, for both of the admin port's protocols: the
gRPC service here and the HTTP JSON routes (:mod:`prism.proxy.admin_http`) call it with the
authenticated caller (:mod:`prism.proxy.adminauth`), and every change is audited
(:mod:`prism.proxy.adminaudit`) with its outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    DisableNamespaceRequest,
    EnableNamespaceRequest,
    EndpointStatus,
    GetNamespaceRequest,
    GetStatusRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    NamespaceStatus,
    ProxyStatus,
    ReloadConfigRequest,
    ReloadConfigResponse,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus, PluginMetrics
from prism.hosting.balancer import Balancer
from prism.hosting.host import NamespaceRoute, PluginHost, PluginStartFailed
from prism.hosting.remote import RemoteModel
from prism.proxy.adminaudit import record_admin
from prism.proxy.adminauth import ADMIN_CALLER, AdminCaller

__all__ = ["AdminActions", "AdminService", "ConfigControl", "namespace_json"]

log = logging.getLogger("prism.admin")

MetricsLookup = Callable[[str], PluginMetrics | None]
"""namespace → the latest metrics collected from its plugin, or None."""

DISABLED = "disabled by an operator"
T = TypeVar("T")


def _no_metrics(namespace: str) -> PluginMetrics | None:
    return None


class ConfigControl(Protocol):
    """The proxy's configuration as the admin API sees it (``configreload.ConfigReloader``)."""

    revision: str
    loaded_at: float
    restart_required: list[str]

    @property
    def path_text(self) -> str: ...

    async def reload_response(self) -> ReloadConfigResponse: ...


class AdminActions:
    """``metrics`` is where the latest collected plugin metrics are looked up. Listing never
    fetches them from the plugin itself: a fetch resets the plugin's interval counters, which
    belong to whoever collects them. ``config``: None when the proxy has no config reload
    (a bare host in a test)."""

    def __init__(
        self,
        host: PluginHost,
        metrics: MetricsLookup = _no_metrics,
        config: ConfigControl | None = None,
    ) -> None:
        self.host = host
        self.metrics = metrics
        self.config = config

    def status(self, route: NamespaceRoute) -> NamespaceStatus:
        ns = route.config
        instance = route.current
        status = NamespaceStatus(name=ns.name, plugin=ns.plugin.name, mode=ns.plugin.mode)
        status.disabled = route.disabled is not None
        if instance is None:
            status.unavailable_reason = route.disabled or "no instance"
        else:
            status.generation = instance.generation
            status.available = instance.available
            status.unavailable_reason = "" if instance.available else instance.down_reason
            status.in_flight = instance.in_flight
            status.last_health = instance.health
            model = self.host.models.get(instance)
            if isinstance(model, RemoteModel) and model.balancer is not None:
                status.endpoints = endpoint_statuses(model.balancer)
        status.metrics = self.metrics(ns.name)
        return status

    def list(self) -> list[NamespaceStatus]:
        return [self.status(route) for route in self.host.routes.values()]

    def get(self, name: str) -> NamespaceStatus:
        return self.status(self.host.route(name))  # NotFound for an unknown name

    def proxy_status(self) -> ProxyStatus:
        disabled = [n for n, route in self.host.routes.items() if route.disabled is not None]
        config = self.config
        if config is None:
            return ProxyStatus(disabled=disabled)
        return ProxyStatus(
            config_revision=config.revision,
            config_loaded_at=config.loaded_at,
            config_path=config.path_text,
            restart_required=list(config.restart_required),
            disabled=disabled,
        )

    async def reload(self, name: str, caller: AdminCaller) -> ReloadNamespaceResponse:
        """Cancellation (the client's deadline or disconnect) cancels ``host.reload`` wherever
        it is: before the route switch the new instance is abandoned and the old one keeps
        serving; after it, the old instance's drain is cut short."""

        async def act() -> ReloadNamespaceResponse:
            route = self.host.route(name)
            if route.disabled is not None:
                raise pg.FailedPrecondition(
                    f"namespace {name!r} is {route.disabled}; enable it to start its plugin"
                )
            started = trio.current_time()
            try:
                # The host serializes reloads of one namespace (its route's lock), so concurrent
                # requests queue here; the duration includes that wait.
                instance = await self.host.reload(name)
            except PluginStartFailed as exc:
                log.warning("admin: reload of namespace %r failed: %s", name, exc)
                raise pg.FailedPrecondition(
                    f"reload failed; the previous instance keeps serving: {exc}"
                ) from None
            return ReloadNamespaceResponse(
                generation=instance.generation,
                duration_seconds=trio.current_time() - started,
                namespace=self.status(route),
            )

        return await _audited("reload", name, caller, act)

    async def disable(self, name: str, caller: AdminCaller) -> NamespaceStatus:
        async def act() -> NamespaceStatus:
            route = self.host.route(name)
            if route.disabled is None:
                await self.host.disable(name, DISABLED)
            return self.status(route)

        return await _audited("disable", name, caller, act)

    async def enable(self, name: str, caller: AdminCaller) -> NamespaceStatus:
        async def act() -> NamespaceStatus:
            route = self.host.route(name)
            try:
                await self.host.enable(name)
            except PluginStartFailed as exc:
                raise pg.FailedPrecondition(
                    f"enable failed; the namespace stays disabled: {exc}"
                ) from None
            return self.status(route)

        return await _audited("enable", name, caller, act)

    async def reload_config(self, caller: AdminCaller) -> ReloadConfigResponse:
        config = self.config

        async def act() -> ReloadConfigResponse:
            if config is None:
                raise pg.FailedPrecondition("this proxy cannot reload its configuration")
            return await config.reload_response()

        return await _audited("config-reload", "", caller, act)


def endpoint_statuses(balancer: Balancer) -> list[EndpointStatus]:
    """Each endpoint of a balanced remote plugin; ejection ends on the wall clock."""
    now, wall = trio.current_time(), time.time()
    statuses = []
    for endpoint in balancer.endpoints:
        state = endpoint.outlier
        statuses.append(
            EndpointStatus(
                address=endpoint.address or "",
                healthy=endpoint.available,
                unavailable_reason="" if endpoint.available else endpoint.down_reason,
                ejected=state.ejected,
                ejected_until=wall + (state.ejected_until - now) if state.ejected else 0.0,
                outstanding=endpoint.in_flight,
                consecutive_failures=state.consecutive,
                ejections=state.ejections,
            )
        )
    return statuses


async def _audited(
    action: str, target: str, caller: AdminCaller, act: Callable[[], Awaitable[T]]
) -> T:
    """Run ``act``, then its audit record with the status it ended with."""
    status = "UNKNOWN"
    try:
        result = await act()
        status = "OK"
        return result
    except pg.GrpcError as exc:
        status = exc.status.name
        raise
    except trio.Cancelled:
        status = "CANCELLED"
        raise
    finally:
        log.info(
            "admin: %s %s by %s from %s: %s", action, target, caller.name, caller.address, status
        )
        record_admin(action, target, caller, status)


def _caller(call: pg.ServerCall) -> AdminCaller:
    return call.state.get(ADMIN_CALLER) or AdminCaller("anonymous", call.peer.address)


class AdminService(pg.Service):
    """``prism.admin.v1.Admin`` over :class:`AdminActions` (its own when none is given)."""

    name = "prism.admin.v1.Admin"

    def __init__(
        self,
        host: PluginHost,
        metrics: MetricsLookup = _no_metrics,
        actions: AdminActions | None = None,
    ) -> None:
        self.actions = actions or AdminActions(host, metrics)

    def status(self, route: NamespaceRoute) -> NamespaceStatus:
        return self.actions.status(route)

    @pg.unary_unary("ListNamespaces", ListNamespacesRequest, ListNamespacesResponse)
    async def list_namespaces(
        self, request: ListNamespacesRequest, call: pg.ServerCall
    ) -> ListNamespacesResponse:
        return ListNamespacesResponse(namespaces=self.actions.list())

    @pg.unary_unary("GetNamespace", GetNamespaceRequest, NamespaceStatus)
    async def get_namespace(
        self, request: GetNamespaceRequest, call: pg.ServerCall
    ) -> NamespaceStatus:
        return self.actions.get(request.name)

    @pg.unary_unary("GetStatus", GetStatusRequest, ProxyStatus)
    async def get_status(self, request: GetStatusRequest, call: pg.ServerCall) -> ProxyStatus:
        return self.actions.proxy_status()

    @pg.unary_unary("ReloadNamespace", ReloadNamespaceRequest, ReloadNamespaceResponse)
    async def reload_namespace(
        self, request: ReloadNamespaceRequest, call: pg.ServerCall
    ) -> ReloadNamespaceResponse:
        return await self.actions.reload(request.namespace, _caller(call))

    @pg.unary_unary("DisableNamespace", DisableNamespaceRequest, NamespaceStatus)
    async def disable_namespace(
        self, request: DisableNamespaceRequest, call: pg.ServerCall
    ) -> NamespaceStatus:
        return await self.actions.disable(request.namespace, _caller(call))

    @pg.unary_unary("EnableNamespace", EnableNamespaceRequest, NamespaceStatus)
    async def enable_namespace(
        self, request: EnableNamespaceRequest, call: pg.ServerCall
    ) -> NamespaceStatus:
        return await self.actions.enable(request.namespace, _caller(call))

    @pg.unary_unary("ReloadConfig", ReloadConfigRequest, ReloadConfigResponse)
    async def reload_config(
        self, request: ReloadConfigRequest, call: pg.ServerCall
    ) -> ReloadConfigResponse:
        return await self.actions.reload_config(_caller(call))


def namespace_json(ns: NamespaceStatus) -> dict[str, Any]:
    """Plain JSON (integers as numbers, absent health/metrics as null), not protobuf's JSON
    mapping, whose int64 strings are awkward for scripts."""
    health = ns.last_health
    return {
        "name": ns.name,
        "plugin": ns.plugin,
        "mode": ns.mode,
        "generation": ns.generation,
        "available": ns.available,
        "disabled": ns.disabled,
        "unavailable_reason": ns.unavailable_reason,
        "in_flight": ns.in_flight,
        "health": None
        if health is None
        else {
            "status": HealthCheckResponseStatus(health.status).name,
            "message": health.message,
            "details": dict(health.details),
        },
        "metrics": None
        if ns.metrics is None
        else {f.name: getattr(ns.metrics, f.name) for f in dataclasses.fields(ns.metrics)},
        "endpoints": [
            {f.name: getattr(e, f.name) for f in dataclasses.fields(e)} for e in ns.endpoints
        ],
    }


def reload_config_json(reply: ReloadConfigResponse) -> dict[str, Any]:
    return {
        "revision": reply.revision,
        "added": list(reply.added),
        "removed": list(reply.removed),
        "reloaded": list(reply.reloaded),
        "unchanged": list(reply.unchanged),
        "failed": list(reply.failed),
        "restart_required": list(reply.restart_required),
    }


def proxy_status_json(status: ProxyStatus) -> dict[str, Any]:
    return {
        "config_revision": status.config_revision,
        "config_loaded_at": status.config_loaded_at,
        "config_path": status.config_path,
        "restart_required": list(status.restart_required),
        "disabled": list(status.disabled),
    }
