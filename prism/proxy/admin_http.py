"""The admin port's HTTP/1.1 routes: ``GET /metrics`` (Prometheus) and ``GET /healthz``.

:func:`admin_routes` builds the route table the admin port's HTTP server serves; a route is
``routes.add(METHOD, PATH, handler)`` with ``async def handler(request) -> Response``
(:mod:`prism.proxy.http`), and each handler reaches what it needs through the proxy.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder

from prism.grpc.health import ServingStatus
from prism.proxy.http import Request, Response, Routes

if TYPE_CHECKING:
    from prism.proxy.app import Proxy

__all__ = ["FRONT_DOOR_SERVICE", "admin_routes"]

#: The health service name whose status /healthz reports.
FRONT_DOOR_SERVICE = "prism.proxy.v1.DataProxy"


def admin_routes(proxy: Proxy) -> Routes:
    routes = Routes()
    routes.add("GET", "/metrics", partial(metrics, proxy))
    routes.add("GET", "/healthz", partial(healthz, proxy))
    return routes


async def metrics(proxy: Proxy, request: Request) -> Response:
    """The proxy's registry in the exposition format the scraper's ``Accept`` asks for
    (prometheus-client's choice: OpenMetrics when asked for, else Prometheus text 0.0.4)."""
    encode, content_type = choose_encoder(request.header("accept") or "")
    return Response(200, encode(proxy.metrics.registry), content_type)


async def healthz(proxy: Proxy, request: Request) -> Response:
    """200 while the front door serves (SERVING), 503 otherwise (starting, stopping): what a
    load balancer or an orchestrator's probe needs. Each namespace's plugin health is in the
    body."""
    state = proxy.health
    serving = state.get(FRONT_DOOR_SERVICE) == ServingStatus.SERVING
    namespaces = {
        ns.name: _status_name(proxy.namespace_status(ns.name)) for ns in proxy.config.namespaces
    }
    body = {"status": "SERVING" if serving else "NOT_SERVING", "namespaces": namespaces}
    return Response.json(body, 200 if serving else 503)


def _status_name(status: ServingStatus | None) -> str:
    return "UNKNOWN" if status is None else status.name
