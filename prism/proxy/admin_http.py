"""The admin port's HTTP/1.1 routes: ``GET /metrics`` (Prometheus), ``GET /healthz`` and the
admin API as JSON (RFC-008's ``POST /admin/plugin/reload {"namespace": ...}`` and the rest).

:func:`admin_routes` builds the route table the admin port's HTTP server serves; a route is
``routes.add(METHOD, PATH, handler)`` with ``async def handler(request) -> Response``
(:mod:`prism.proxy.http`), and each handler reaches what it needs through the proxy. The JSON
routes do what the gRPC API does (:class:`prism.proxy.admin.AdminActions`), with the same
authentication (:mod:`prism.proxy.adminauth`: ``authorization: Bearer``, client certificate,
Unix socket) and the gRPC status as an HTTP code (:data:`HTTP_STATUS`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client.exposition import choose_encoder

from prism.grpc.health import ServingStatus
from prism.grpc.wire.status import GrpcError, InvalidArgument, Status
from prism.proxy.admin import namespace_json, proxy_status_json, reload_config_json
from prism.proxy.adminauth import AdminCaller
from prism.proxy.configreload import ConfigRejected
from prism.proxy.http import HttpError, Request, Response, Routes

if TYPE_CHECKING:
    from prism.proxy.app import Proxy

__all__ = ["FRONT_DOOR_SERVICE", "HTTP_STATUS", "admin_routes", "healthz", "metrics_response"]

#: The health service name whose status /healthz reports.
FRONT_DOOR_SERVICE = "prism.proxy.v1.DataProxy"

#: A gRPC status as the HTTP JSON API answers it (anything else: 500).
HTTP_STATUS = {
    Status.OK: 200,
    Status.INVALID_ARGUMENT: 400,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.FAILED_PRECONDITION: 409,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 504,
}

Action = Callable[["Proxy", Request, AdminCaller], Awaitable[Any]]


def admin_routes(proxy: Proxy) -> Routes:
    routes = Routes()
    routes.add("GET", "/metrics", partial(_guarded, proxy, "metrics", True, metrics))
    routes.add("GET", "/healthz", partial(healthz, proxy))
    for method, path, action, read, run in (
        ("GET", "/admin/status", "status", True, _status),
        ("GET", "/admin/plugin/list", "list", True, _list),
        ("GET", "/admin/plugin/status", "get", True, _get),
        ("POST", "/admin/plugin/reload", "reload", False, _reload),
        ("POST", "/admin/plugin/enable", "enable", False, _enable),
        ("POST", "/admin/plugin/disable", "disable", False, _disable),
        ("POST", "/admin/config/reload", "config-reload", False, _reload_config),
    ):
        routes.add(method, path, partial(_guarded, proxy, action, read, partial(_json, run)))
    return routes


async def _guarded(
    proxy: Proxy,
    action: str,
    read: bool,
    handler: Callable[[Proxy, Request, AdminCaller], Awaitable[Response]],
    request: Request,
) -> Response:
    """Authenticate, then ``handler``; a GrpcError becomes its HTTP code, ``{"error": ...}``."""
    auth = proxy.admin_auth
    try:
        if auth is None:
            raise HttpError(404, "the admin API is off")
        caller = auth.caller(request.peer, request.header("authorization"))
        auth.check(caller, action, read=read)
        return await handler(proxy, request, caller)
    except ConfigRejected as exc:
        return Response.json({"error": exc.message, "errors": exc.errors}, 409)
    except GrpcError as exc:
        response = Response.json({"error": exc.message}, HTTP_STATUS.get(exc.status, 500))
        if exc.status == Status.UNAUTHENTICATED:
            return Response(
                response.status,
                response.body,
                response.content_type,
                (("www-authenticate", 'Bearer realm="prism-admin"'),),
            )
        return response


async def _json(run: Action, proxy: Proxy, request: Request, caller: AdminCaller) -> Response:
    return Response.json(await run(proxy, request, caller))


def _namespace(request: Request) -> str:
    """``{"namespace": NAME}`` from a POST body, or ``?namespace=NAME`` from a GET's query."""
    if request.method == "POST":
        body = request.json()
        name = body.get("namespace") if isinstance(body, dict) else None
    else:
        name = None
        for part in request.query.split("&"):
            key, _, value = part.partition("=")
            if key == "namespace":
                name = unquote(value)
    if not isinstance(name, str) or not name:
        raise InvalidArgument("'namespace' is required")
    return name


async def _status(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    return proxy_status_json(proxy.admin_actions.proxy_status())


async def _list(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    return {"namespaces": [namespace_json(ns) for ns in proxy.admin_actions.list()]}


async def _get(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    return namespace_json(proxy.admin_actions.get(_namespace(request)))


async def _reload(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    reply = await proxy.admin_actions.reload(_namespace(request), caller)
    return {
        "generation": reply.generation,
        "duration_seconds": reply.duration_seconds,
        "namespace": namespace_json(reply.namespace),
    }


async def _enable(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    return namespace_json(await proxy.admin_actions.enable(_namespace(request), caller))


async def _disable(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    return namespace_json(await proxy.admin_actions.disable(_namespace(request), caller))


async def _reload_config(proxy: Proxy, request: Request, caller: AdminCaller) -> Any:
    return reload_config_json(await proxy.admin_actions.reload_config(caller))


async def metrics(proxy: Proxy, request: Request, caller: AdminCaller) -> Response:
    return metrics_response(proxy, request)


def metrics_response(proxy: Proxy, request: Request) -> Response:
    """The proxy's registry in the exposition format the scraper's ``Accept`` asks for
    (prometheus-client's choice: OpenMetrics when asked for, else Prometheus text 0.0.4)."""
    encode, content_type = choose_encoder(request.header("accept") or "")
    return Response(200, encode(proxy.metrics.registry), content_type)


async def healthz(proxy: Proxy, request: Request) -> Response:
    """200 while the front door serves (SERVING), 503 otherwise (starting, stopping): what a
    load balancer or an orchestrator's probe needs. Each namespace's plugin health is in the
    body. Always open: a probe has no credentials."""
    state = proxy.health
    serving = state.get(FRONT_DOOR_SERVICE) == ServingStatus.SERVING
    namespaces = {
        ns.name: _status_name(proxy.namespace_status(ns.name)) for ns in proxy.config.namespaces
    }
    body = {"status": "SERVING" if serving else "NOT_SERVING", "namespaces": namespaces}
    return Response.json(body, 200 if serving else 503)


def _status_name(status: ServingStatus | None) -> str:
    return "UNKNOWN" if status is None else status.name
