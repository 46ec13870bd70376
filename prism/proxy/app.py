"""The proxy process: plugin host + front door + health + reflection, in one nursery."""

from __future__ import annotations

import logging
from functools import partial

import trio

from prism import grpc as pg
from prism.grpc.health import Health, HealthState, ServingStatus
from prism.grpc.reflection import Reflection
from prism.grpc.transport import server_ssl_context, split_host_port
from prism.hosting.host import PluginHost
from prism.proxy.config import ProxyConfig
from prism.proxy.frontdoor import DataProxyService

log = logging.getLogger("prism.proxy")


def namespace_health_name(namespace: str) -> str:
    """The grpc.health.v1 service name under which a namespace's plugin health is reported."""
    return f"prism.namespace/{namespace}"


class Proxy:
    """A running proxy. ``address`` is where the front door listens."""

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
        self.address: tuple[str, int] | None = None
        self._scope: trio.CancelScope | None = None

    def _namespace_status(self, namespace: str, serving: bool) -> None:
        status = ServingStatus.SERVING if serving else ServingStatus.NOT_SERVING
        self.health.set(namespace_health_name(namespace), status)

    async def run(self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED) -> None:
        """Start plugins, then listen; ``started`` once both are up. Runs until :meth:`stop`
        or cancellation (which stops everything at once, without grace)."""
        host, port = split_host_port(self.config.listen)
        tls = self.config.tls
        ssl_context = server_ssl_context(tls.cert, tls.key, tls.client_ca) if tls else None
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.host.run)
                self.address = await nursery.start(
                    partial(self.server.serve_tcp, host, port, ssl_context=ssl_context)
                )
                self.health.set("prism.proxy.v1.DataProxy", ServingStatus.SERVING)
                log.info(
                    "prism listening on %s:%d (%s)",
                    *self.address,
                    ", ".join(
                        f"{n.name}={n.plugin.name}/{n.plugin.mode}" for n in self.config.namespaces
                    ),
                )
                task_status.started(self)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, GOAWAY, in-flight calls get ``shutdown_grace``, then
        plugins are shut down."""
        self.health.shutdown()
        await self.server.shutdown(self.config.shutdown_grace)
        if self._scope is not None:
            self._scope.cancel()
