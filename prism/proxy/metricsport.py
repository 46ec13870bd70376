"""The metrics port (``metrics.listen``): ``GET /metrics`` and ``GET /healthz`` over plaintext
HTTP/1.1 on an address of its own, for a Prometheus scraper and an orchestrator's probes.

Only those two read-only routes exist here, answered without credentials; everything the admin
API can change stays on the loopback admin port. Connections are capped (more are closed as they
arrive) and the HTTP server's own limits apply (request and keep-alive timeouts, head size).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import trio

from prism.proxy.admin_http import healthz, metrics_response
from prism.proxy.http import HttpServer, Request, Response, Routes

if TYPE_CHECKING:
    from prism.proxy.app import Proxy

__all__ = ["MetricsPort", "metrics_routes"]

log = logging.getLogger("prism.metrics")


def metrics_routes(proxy: Proxy) -> Routes:
    routes = Routes()
    routes.add("GET", "/metrics", partial(_metrics, proxy))
    routes.add("GET", "/healthz", partial(healthz, proxy))
    return routes


async def _metrics(proxy: Proxy, request: Request) -> Response:
    return metrics_response(proxy, request)


class MetricsPort:
    """One TCP listener handing each connection to an :class:`HttpServer` of the two routes."""

    def __init__(self, proxy: Proxy, *, max_connections: int) -> None:
        self.http = HttpServer(metrics_routes(proxy))
        self.max_connections = max_connections
        self._open = 0
        self._scope: trio.CancelScope | None = None

    async def serve_tcp(
        self,
        host: str | None,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as connections:
            with trio.CancelScope() as self._scope:
                try:
                    async with trio.open_nursery() as accepting:
                        for listener in listeners:
                            accepting.start_soon(self._accept_loop, listener, connections)
                        task_status.started(bound)
                finally:
                    for listener in listeners:
                        listener.socket.close()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; requests in progress finish within ``grace``."""
        if self._scope is not None:
            self._scope.cancel()
        await self.http.shutdown(grace)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.warning("metrics port: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self._open >= self.max_connections:
                await trio.aclose_forcefully(stream)
                continue
            self._open += 1
            nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self.http.serve_connection(stream)
        finally:
            self._open -= 1
