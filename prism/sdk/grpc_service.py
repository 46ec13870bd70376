"""``prism.plugin.v1.BackendPlugin`` served over gRPC: a plugin instance as a sidecar or remote
service. The same plugin object runs in-process without this module."""

from __future__ import annotations

import trio

from prism import grpc as pg
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    InitializeRequest,
    InitializeResponse,
    ShutdownRequest,
    ShutdownResponse,
    StreamRequest,
    StreamResponse,
)
from prism.sdk.instance import PluginInstance


class BackendPluginService(pg.Service):
    name = "prism.plugin.v1.BackendPlugin"

    def __init__(self, instance: PluginInstance) -> None:
        self.instance = instance
        #: Set once Shutdown was answered: the process serving this should exit.
        self.shut_down = trio.Event()

    @pg.unary_unary("Initialize", InitializeRequest, InitializeResponse)
    async def initialize(
        self, request: InitializeRequest, call: pg.ServerCall
    ) -> InitializeResponse:
        return await self.instance.initialize(request)

    @pg.unary_unary("HealthCheck", HealthCheckRequest, HealthCheckResponse)
    async def health_check(
        self, request: HealthCheckRequest, call: pg.ServerCall
    ) -> HealthCheckResponse:
        return await self.instance.health_check(request)

    @pg.unary_unary("Execute", ExecuteRequest, ExecuteResponse)
    async def execute(self, request: ExecuteRequest, call: pg.ServerCall) -> ExecuteResponse:
        return await self.instance.execute(request)

    @pg.stream_stream("ExecuteStream", StreamRequest, StreamResponse)
    async def execute_stream(self, call: pg.ServerCall) -> None:
        await self.instance.execute_stream(call.receive_message, call.send_message)

    @pg.unary_unary("Shutdown", ShutdownRequest, ShutdownResponse)
    async def shutdown(self, request: ShutdownRequest, call: pg.ServerCall) -> ShutdownResponse:
        try:
            return await self.instance.shutdown(request)
        finally:
            self.shut_down.set()
