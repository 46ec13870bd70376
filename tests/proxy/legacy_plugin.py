"""A sidecar plugin not built on Prism's SDK: the plugin protocol by hand on prism.grpc, as a
plugin in another language would speak it. It declares only operation names (Initialize's
``supported_operations``) and does not answer the reserved ``_prism.describe``."""

from __future__ import annotations

import os
from pathlib import Path

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
)
from prism.plugin_protocol.handshake import ENV_SOCKET, handshake_line


class Legacy(pg.Service):
    name = "prism.plugin.v1.BackendPlugin"

    def __init__(self) -> None:
        self.done = trio.Event()

    @pg.unary_unary("Initialize", InitializeRequest, InitializeResponse)
    async def initialize(
        self, request: InitializeRequest, call: pg.ServerCall
    ) -> InitializeResponse:
        return InitializeResponse(
            success=True, plugin_version="0.9", supported_operations=["get", "get:etag", "ping"]
        )

    @pg.unary_unary("HealthCheck", HealthCheckRequest, HealthCheckResponse)
    async def health_check(
        self, request: HealthCheckRequest, call: pg.ServerCall
    ) -> HealthCheckResponse:
        return HealthCheckResponse()

    @pg.unary_unary("Execute", ExecuteRequest, ExecuteResponse)
    async def execute(self, request: ExecuteRequest, call: pg.ServerCall) -> ExecuteResponse:
        if request.operation == "ping":
            return ExecuteResponse(success=True, raw_result=b"pong")
        return ExecuteResponse(success=False, error="unknown operation", error_code=12)

    @pg.unary_unary("Shutdown", ShutdownRequest, ShutdownResponse)
    async def shutdown(self, request: ShutdownRequest, call: pg.ServerCall) -> ShutdownResponse:
        self.done.set()
        return ShutdownResponse(success=True)


async def main() -> None:
    path = Path(os.environ[ENV_SOCKET])
    service = Legacy()
    server = pg.Server([service])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_unix, path)
        print(handshake_line(path, 1), flush=True)
        await service.done.wait()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
