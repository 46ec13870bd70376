"""The proxy process: plugin host + front door + admin port + health + reflection, in one
nursery.

The front door's server runs the request pipeline (:mod:`prism.proxy.pipeline`, built by
:mod:`prism.proxy.assembly`); the admin port (:mod:`prism.proxy.adminport`) serves the admin
API over gRPC and HTTP/1.1 (``/metrics``, ``/healthz``) on each admin listener.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from prism import grpc as pg
from prism.config import ProxyConfig, check_admin_listen
from prism.config.admin import resolve_admin_token
from prism.grpc.health import Health, HealthState, ServingStatus
from prism.grpc.reflection import Reflection
from prism.grpc.transport import server_ssl_context, split_host_port
from prism.hosting.host import PluginHost
from prism.proxy.admin import AdminActions, AdminService
from prism.proxy.admin_http import FRONT_DOOR_SERVICE, admin_routes
from prism.proxy.adminauth import AdminAuth, AdminAuthInterceptor
from prism.proxy.adminport import AdminPort, admin_ssl_context
from prism.proxy.assembly import build_pipeline
from prism.proxy.audit import AuditLog
from prism.proxy.auditdrops import AuditDrops
from prism.proxy.configreload import ConfigReloader, ReloadResult
from prism.proxy.frontdoor import DataProxyService
from prism.proxy.http import HttpServer
from prism.proxy.metrics import ProxyMetrics
from prism.proxy.metricsport import MetricsPort

log = logging.getLogger("prism.proxy")


class ListenFailed(Exception):
    """A listener could not be opened (address in use, no permission); the message says which."""


def namespace_health_name(namespace: str) -> str:
    """The grpc.health.v1 service name under which a namespace's plugin health is reported."""
    return f"prism.namespace/{namespace}"


class Proxy:
    """A running proxy. ``address`` is where the front door listens; ``admin_address`` and
    ``admin_socket`` where the admin port does (None when not configured). ``metrics``: its
    Prometheus metrics (its own registry); ``pipeline``: the front door's request stages.
    ``config_path``: the file ``config`` was read from, which :meth:`reload_config` re-reads;
    ``overrides``: what was changed in it after reading (``prism serve --listen``...), applied
    to each re-read file too."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        config_path: Path | None = None,
        overrides: Callable[[ProxyConfig], ProxyConfig] | None = None,
    ) -> None:
        self.config = config
        self.health = HealthState()
        self.metrics = ProxyMetrics()
        self.host = PluginHost(config, on_status=self._namespace_status, events=self.metrics)
        self.pipeline = build_pipeline(config, self.host, self.metrics)
        audit = self.pipeline.audit
        self.audit_drops = (
            AuditDrops(audit, self.metrics.registry) if isinstance(audit, AuditLog) else None
        )
        self.server = pg.Server(
            [DataProxyService(self.host, self.pipeline), Health(self.health)],
            pg.ServerOptions(
                max_receive_message_size=config.max_message_size,
                max_send_message_size=config.max_message_size,
            ),
            interceptors=[self.pipeline.interceptor],
        )
        for service in Reflection.for_server(self.server).services():
            self.server.add_service(service)
        # The admin API gets its own servers, on the admin port: never reachable through the
        # front door's (possibly public) listener, whatever its address.
        self.admin_server: pg.Server | None = None
        self.admin_port: AdminPort | None = None
        self.admin_auth: AdminAuth | None = None
        self.reloader = ConfigReloader(self, config_path, overrides)
        if config.admin.enabled:
            if config.admin.listen is not None:
                check_admin_listen(config.admin.listen)  # also for configs built in code
            token = resolve_admin_token(config.admin, config.secrets)
            self.admin_auth = AdminAuth(token, anonymous_read=config.admin.anonymous_read)
            self.admin_actions = AdminActions(self.host, self.host.latest_metrics, self.reloader)
            self.admin_server = pg.Server(
                [AdminService(self.host, actions=self.admin_actions), Health(self.health)],
                interceptors=[AdminAuthInterceptor(self.admin_auth)],
            )
            for service in Reflection.for_server(self.admin_server).services():
                self.admin_server.add_service(service)
            self.admin_http = HttpServer(admin_routes(self))
            self.admin_port = AdminPort(self.admin_server, self.admin_http)
        self.metrics_port: MetricsPort | None = None
        if config.metrics.listen is not None:
            self.metrics_port = MetricsPort(self, max_connections=config.metrics.max_connections)
        self.address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.admin_socket: str | None = None
        self._scope: trio.CancelScope | None = None
        #: Where tasks started while the proxy runs live (a reloaded authenticator's).
        self.nursery: trio.Nursery | None = None

    def _namespace_status(self, namespace: str, serving: bool) -> None:
        status = ServingStatus.SERVING if serving else ServingStatus.NOT_SERVING
        self.health.set(namespace_health_name(namespace), status)

    def forget_namespace(self, namespace: str) -> None:
        """A namespace left the configuration: its health name stops serving."""
        self.health.set(namespace_health_name(namespace), ServingStatus.NOT_SERVING)

    async def reload_config(self) -> ReloadResult:
        """Re-read the config file and apply what changed (:mod:`prism.proxy.configreload`);
        ConfigRejected when it is invalid (the running configuration keeps serving)."""
        return await self.reloader.reload()

    def namespace_status(self, namespace: str) -> ServingStatus | None:
        """The health of ``namespace``'s plugin (None before its first report)."""
        return self.health.get(namespace_health_name(namespace))

    async def run(self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED) -> None:
        """Start plugins, then listen; ``started`` once both are up. Runs until :meth:`stop`
        or cancellation (which stops listening at once, without grace; plugins are still sent
        Shutdown, each within its ``drain_grace``)."""
        host, port = split_host_port(self.config.listen)
        tls = self.config.tls
        ssl_context = None
        if tls is not None:
            ssl_context = server_ssl_context(tls.cert, tls.key, tls.client_ca)
            if tls.client_ca is not None and not self.config.auth.mtls.required:
                # Asked for and verified when sent; a client without one still connects.
                ssl_context.verify_mode = ssl.CERT_OPTIONAL
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await nursery.start(self.host.run)
                await nursery.start(self.pipeline.run)  # stages' background work, if any
                if self.audit_drops is not None:
                    await nursery.start(self.audit_drops.run)
                self.address = await _listen(
                    nursery,
                    partial(self.server.serve_tcp, host, port, ssl_context=ssl_context),
                    f"{self.config.listen} (listen)",
                )
                await self._start_admin(nursery)
                await self._start_metrics(nursery)
                self.health.set(FRONT_DOOR_SERVICE, ServingStatus.SERVING)
                log.info(
                    "prism listening on %s:%d (%s)",
                    *self.address,
                    ", ".join(
                        f"{n.name}={n.plugin.name}/{n.plugin.mode}" for n in self.config.namespaces
                    ),
                )
                task_status.started(self)

    async def _start_admin(self, nursery: trio.Nursery) -> None:
        admin, port = self.config.admin, self.admin_port
        if port is None:
            return
        if admin.listen is not None:
            host, number = split_host_port(admin.listen)
            tls = admin.tls
            context = admin_ssl_context(tls.cert, tls.key, tls.client_ca) if tls else None
            self.admin_address = await _listen(
                nursery,
                partial(port.serve_tcp, host, number, ssl_context=context),
                f"{admin.listen} (admin.listen)",
            )
            log.info("admin API on %s:%d (gRPC and HTTP)", *self.admin_address)
            if admin.token is None and (tls is None or tls.client_ca is None):
                log.warning(
                    "admin API on %s:%d: no admin.token and no admin.tls.client_ca, so every "
                    "call but /healthz%s is refused there (UNAUTHENTICATED); use "
                    "admin.unix_socket or configure one",
                    *self.admin_address,
                    " and reads" if admin.anonymous_read else "",
                )
        if admin.unix_socket is not None:
            what = f"unix:{admin.unix_socket} (admin.unix_socket)"
            # serve_unix replaces a stale socket file; one a live proxy still answers on is not
            # stale, and replacing it would silently take that proxy's admin API away.
            if await _answers(admin.unix_socket):
                raise ListenFailed(f"cannot listen on {what}: another process is serving on it")
            self.admin_socket = await _listen(
                nursery, partial(port.serve_unix, admin.unix_socket, mode=0o600), what
            )
            log.info("admin API on unix:%s (gRPC and HTTP)", self.admin_socket)

    async def _start_metrics(self, nursery: trio.Nursery) -> None:
        listen, port = self.config.metrics.listen, self.metrics_port
        if listen is None or port is None:
            return
        host, number = split_host_port(listen)
        self.metrics_address = await _listen(
            nursery, partial(port.serve_tcp, host, number), f"{listen} (metrics.listen)"
        )
        log.info("/metrics and /healthz on %s:%d (HTTP, no credentials)", *self.metrics_address)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, GOAWAY, in-flight calls get ``shutdown_grace``, then
        plugins are shut down."""
        self.health.shutdown()
        grace = self.config.shutdown_grace
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.server.shutdown, grace)
            if self.admin_port is not None:
                nursery.start_soon(self.admin_port.shutdown, grace)
            if self.metrics_port is not None:
                nursery.start_soon(self.metrics_port.shutdown, grace)
        if self._scope is not None:
            self._scope.cancel()


async def _listen(nursery: trio.Nursery, serve: Callable[..., Awaitable[Any]], what: str) -> Any:
    """Start a listener task; its OSError (address in use, ...) becomes one clear ListenFailed.
    ``what``: the address and the setting it comes from, ``127.0.0.1:50051 (listen)``."""
    try:
        return await nursery.start(serve)
    except OSError as exc:
        raise ListenFailed(f"cannot listen on {what}: {exc.strerror or exc}") from None


async def _answers(path: Path) -> bool:
    try:
        stream = await trio.open_unix_socket(os.fspath(path))
    except OSError:
        return False
    await stream.aclose()
    return True
