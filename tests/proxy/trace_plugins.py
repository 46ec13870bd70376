"""A plugin the tracing and logging tests load in-process or as a sidecar
(``trace_plugins:MetadataEcho``): it answers with the request metadata it was given (Execute and
ExecuteStream), and logs."""

from __future__ import annotations

import json
import logging

from prism.sdk import BackendPlugin, OperationContext, OperationStream, operation, stream_operation

log = logging.getLogger("trace_plugins.backend")


class MetadataEcho(BackendPlugin):
    name = "metadata-echo"
    version = "0.1.0"
    config_required = False

    @operation("meta", params=bytes, result=bytes)
    async def meta(self, params: bytes, ctx: OperationContext) -> bytes:
        """The request's metadata map as JSON; logs ``params`` (as text) at WARNING and DEBUG."""
        log.warning("asked: %s", params.decode())
        log.debug("details: %s", params.decode())
        return json.dumps(dict(ctx.metadata)).encode()

    @operation("crash", params=bytes, result=bytes)
    async def crash(self, params: bytes, ctx: OperationContext) -> bytes:
        """A bug in the plugin."""
        raise RuntimeError("the plugin has a bug")

    @stream_operation("meta_stream", params=bytes, result=bytes)
    async def meta_stream(self, params: bytes, stream: OperationStream) -> None:
        """The stream's metadata map as JSON, in one message; logs like ``meta``."""
        log.warning("streamed: %s", params.decode())
        await stream.send(json.dumps(dict(stream.metadata)).encode())
