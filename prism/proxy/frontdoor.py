"""The client-facing DataProxy service: its methods hand each call to the request pipeline.

What happens to a call, stage by stage, is in :mod:`prism.proxy.pipeline`; what the front
door reads of a request (namespace and operation, never the payload) in
:mod:`prism.proxy.envelope`.

An exception that is no status (a bug) ends the call with UNKNOWN, ``internal error in METHOD
(trace id ID)``, and is logged with its traceback under the same id: the call's W3C trace id
(the one in its audit record and its other log lines), so the id a client reports is the one
to grep for. A plugin's bug is reported by the SDK under that id too (it gets the trace id in
``traceparent``).
"""

from __future__ import annotations

import logging

from prism import grpc as pg
from prism._proto.prism.proxy.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    ListAccessibleNamespacesRequest,
    ListAccessibleNamespacesResponse,
)
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, Unknown
from prism.proxy import discovery
from prism.proxy.envelope import check_response
from prism.proxy.pipeline import Pipeline, Route, Router

__all__ = ["DataProxyService", "Route", "Router", "check_response", "internal_error"]

log = logging.getLogger("prism.proxy")


def internal_error(exc: Exception, call: pg.ServerCall) -> GrpcError | None:
    """The UNKNOWN error a bug ends ``call`` with, logged under the call's trace id; None when
    ``exc`` holds a status (the server's own boundary reports it, and any bug beside it)."""
    if isinstance(exc, GrpcError):
        return None
    if isinstance(exc, ExceptionGroup) and exc.subgroup(GrpcError) is not None:
        return None
    trace_id = call.trace_id  # the tracing stage's, when it ran
    log.error(
        "%s failed (trace id %s)", call.method, trace_id, exc_info=exc, extra={"trace_id": trace_id}
    )
    return Unknown(f"internal error in {call.method} (trace id {trace_id})")


class DataProxyService(pg.Service):
    """``pipeline``: the proxy's; without one, the calls go straight to ``router`` with no
    stage (and nothing counted) on the way."""

    name = "prism.proxy.v1.DataProxy"

    def __init__(self, router: Router, pipeline: Pipeline | None = None) -> None:
        self.router = router
        self.pipeline = pipeline if pipeline is not None else Pipeline(router)

    @pg.unary_unary("Execute", bytes, bytes)
    async def execute(self, request: bytes, call: pg.ServerCall) -> bytes | Pieces:
        try:
            return await self.pipeline.unary(call, request)
        except Exception as exc:
            error = internal_error(exc, call)
            if error is None:
                raise
            raise error from None

    @pg.stream_stream("ExecuteStream", bytes, bytes)
    async def execute_stream(self, call: pg.ServerCall) -> None:
        try:
            await self.pipeline.stream(call)
        except Exception as exc:
            error = internal_error(exc, call)
            if error is None:
                raise
            raise error from None

    @pg.unary_unary("DescribeNamespace", DescribeNamespaceRequest, DescribeNamespaceResponse)
    async def describe_namespace(
        self, request: DescribeNamespaceRequest, call: pg.ServerCall
    ) -> DescribeNamespaceResponse:
        """Discovery (``prism.proxy.discovery``): what the namespace serves."""
        return await discovery.describe_namespace(self.pipeline, call, request)

    @pg.unary_unary(
        "ListAccessibleNamespaces",
        ListAccessibleNamespacesRequest,
        ListAccessibleNamespacesResponse,
    )
    async def list_accessible_namespaces(
        self, request: ListAccessibleNamespacesRequest, call: pg.ServerCall
    ) -> ListAccessibleNamespacesResponse:
        """Discovery: the namespaces the caller may use."""
        return discovery.list_accessible_namespaces(self.pipeline, call)
