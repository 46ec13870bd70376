"""The client-facing DataProxy service: its methods hand each call to the request pipeline.

What happens to a call, stage by stage, is in :mod:`prism.proxy.pipeline`; what the front
door reads of a request (namespace and operation, never the payload) in
:mod:`prism.proxy.envelope`.
"""

from __future__ import annotations

from prism import grpc as pg
from prism.proxy.envelope import check_response
from prism.proxy.pipeline import Pipeline, Route, Router

__all__ = ["DataProxyService", "Route", "Router", "check_response"]


class DataProxyService(pg.Service):
    """``pipeline``: the proxy's; without one, the calls go straight to ``router`` with no
    stage (and nothing counted) on the way."""

    name = "prism.proxy.v1.DataProxy"

    def __init__(self, router: Router, pipeline: Pipeline | None = None) -> None:
        self.router = router
        self.pipeline = pipeline if pipeline is not None else Pipeline(router)

    @pg.unary_unary("Execute", bytes, bytes)
    async def execute(self, request: bytes, call: pg.ServerCall) -> bytes:
        return await self.pipeline.unary(call, request)

    @pg.stream_stream("ExecuteStream", bytes, bytes)
    async def execute_stream(self, call: pg.ServerCall) -> None:
        await self.pipeline.stream(call)
