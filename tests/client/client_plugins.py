"""A plugin the client tests load in-process (``client_plugins:ProbePlugin``): operations that
are slow, fail with a chosen status, echo what they were sent, and stream."""

from __future__ import annotations

import trio

from prism._proto.prism.data.v1 import Message, PublishRequest, SubscribeRequest
from prism.sdk import (
    BackendPlugin,
    GrpcError,
    OperationContext,
    OperationStream,
    Status,
    operation,
    stream_operation,
)


class ProbePlugin(BackendPlugin):
    name = "probe"
    version = "0.1.0"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    @operation("slow", params=bytes, result=bytes)
    async def slow(self, params: bytes, ctx: OperationContext) -> bytes:
        """Sleeps ``params`` seconds; its start and a cancellation are recorded (``events``)."""
        self.events.append("slow started")
        try:
            await trio.sleep(float(params))
        except trio.Cancelled:
            self.events.append("slow cancelled")
            raise
        return b"done"

    @operation("events", params=bytes, result=bytes)
    async def recorded(self, params: bytes, ctx: OperationContext) -> bytes:
        return "\n".join(self.events).encode()

    @operation("echo", params=bytes, result=bytes)
    async def echo(self, params: bytes, ctx: OperationContext) -> bytes:
        """The raw params, then the request's metadata map."""
        return params + b"|" + repr(sorted(ctx.metadata.items())).encode()

    @operation("fail", params=bytes, result=bytes)
    async def fail(self, params: bytes, ctx: OperationContext) -> bytes:
        """Fails with the status named by ``params`` (``ABORTED``)."""
        raise GrpcError.for_status(Status[params.decode()], f"failed as asked: {params.decode()}")

    @stream_operation("count", params=bytes, result=bytes)
    async def count(self, params: bytes, stream: OperationStream) -> None:
        for i in range(int(params)):
            await stream.send(str(i).encode())

    @stream_operation("chat", params=SubscribeRequest, result=Message, inbound=PublishRequest)
    async def chat(self, params: SubscribeRequest, stream: OperationStream) -> None:
        """Each further request comes back as a Message on the opening request's topic; the
        client's half-close ends the stream with a last ``bye``."""
        sequence = 0
        async for request in stream:
            assert isinstance(request, PublishRequest)
            sequence += 1
            await stream.send(
                Message(topic=params.topic, payload=request.payload, sequence=sequence)
            )
        await stream.send(Message(topic=params.topic, payload=b"bye", sequence=sequence + 1))
