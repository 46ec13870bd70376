"""The proxy process: plugin host + front door + admin API + health + reflection, in one
nursery."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from prism import grpc as pg
from prism.config import ProxyConfig, check_admin_listen
from prism.grpc.health import Health, HealthState, ServingStatus
from prism.grpc.reflection import Reflection
from prism.grpc.transport import server_ssl_context, split_host_port
from prism.hosting.host import PluginHost
from prism.proxy.admin import AdminService
from prism.proxy.frontdoor import DataProxyService

log = logging.getLogger("prism.proxy")


class ListenFailed(Exception):
    """A listener could not be opened (address in use, no permission); the message says which."""


def namespace_health_name(namespace: str) -> str:
    """The grpc.health.v1 service name under which a namespace's plugin health is reported."""
    return f"prism.namespace/{namespace}"


class Proxy:
    """A running proxy. ``address`` is where the front door listens; ``admin_address`` and
    ``admin_socket`` where the admin API does (None when not configured)."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.health = HealthState()
        self.host = PluginHost(config, on_status=self._namespace_status)
        self.server = pg.Server(
            [DataProxyService(self.host), Health(self.health)],
            pg.ServerOptions(
                max_receive_message_size=config.max_message_size,
                max_send_message_size=config.max_message_size,
            ),
        )
        for service in Reflection.for_server(self.server).services():
            self.server.add_service(service)
        # The admin API gets its own server: never reachable through the front door's
        # (possibly public) listener, whatever its address.
        self.admin_server: pg.Server | None = None
        if config.admin.enabled:
            if config.admin.listen is not None:
                check_admin_listen(config.admin.listen)  # also for configs built in code
            self.admin_server = pg.Server(
                [AdminService(self.host, self.host.latest_metrics), Health(self.health)]
            )
            for service in Reflection.for_server(self.admin_server).services():
                self.admin_server.add_service(service)
        self.address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.admin_socket: str | None = None
        self._scope: trio.CancelScope | None = None

    def _namespace_status(self, namespace: str, serving: bool) -> None:
        status = ServingStatus.SERVING if serving else ServingStatus.NOT_SERVING
        self.health.set(namespace_health_name(namespace), status)

    async def run(self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED) -> None:
        """Start plugins, then listen; ``started`` once both are up. Runs until :meth:`stop`
        or cancellation (which stops listening at once, without grace; plugins are still sent
        Shutdown, each within its ``drain_grace``)."""
        host, port = split_host_port(self.config.listen)
        tls = self.config.tls
        ssl_context = server_ssl_context(tls.cert, tls.key, tls.client_ca) if tls else None
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.host.run)
                self.address = await _listen(
                    nursery,
                    partial(self.server.serve_tcp, host, port, ssl_context=ssl_context),
                    f"{self.config.listen} (listen)",
                )
                await self._start_admin(nursery)
                self.health.set("prism.proxy.v1.DataProxy", ServingStatus.SERVING)
                log.info(
                    "prism listening on %s:%d (%s)",
                    *self.address,
                    ", ".join(
                        f"{n.name}={n.plugin.name}/{n.plugin.mode}" for n in self.config.namespaces
                    ),
                )
                task_status.started(self)

    async def _start_admin(self, nursery: trio.Nursery) -> None:
        admin, server = self.config.admin, self.admin_server
        if server is None:
            return
        if admin.listen is not None:
            host, port = split_host_port(admin.listen)
            self.admin_address = await _listen(
                nursery, partial(server.serve_tcp, host, port), f"{admin.listen} (admin.listen)"
            )
            log.info("admin API on %s:%d", *self.admin_address)
        if admin.unix_socket is not None:
            what = f"unix:{admin.unix_socket} (admin.unix_socket)"
            # serve_unix replaces a stale socket file; one a live proxy still answers on is not
            # stale, and replacing it would silently take that proxy's admin API away.
            if await _answers(admin.unix_socket):
                raise ListenFailed(f"cannot listen on {what}: another process is serving on it")
            self.admin_socket = await _listen(
                nursery, partial(server.serve_unix, admin.unix_socket, mode=0o600), what
            )
            log.info("admin API on unix:%s", self.admin_socket)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, GOAWAY, in-flight calls get ``shutdown_grace``, then
        plugins are shut down."""
        self.health.shutdown()
        async with trio.open_nursery() as nursery:
            for server in (self.server, self.admin_server):
                if server is not None:
                    nursery.start_soon(server.shutdown, self.config.shutdown_grace)
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
