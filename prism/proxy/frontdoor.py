"""The client-facing DataProxy service: route on namespace + operation, forward bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from prism import grpc as pg
from prism import protowire
from prism.grpc.wire.status import GrpcError, InvalidArgument, Status

# Field numbers shared by prism.proxy.v1 and prism.plugin.v1 (see proxy.proto).
_OPERATION, _NAMESPACE = 1, 15
_SUCCESS, _ERROR, _ERROR_CODE = 1, 2, 3
_REQUEST_FIELDS = frozenset({_OPERATION, _NAMESPACE})
_RESPONSE_FIELDS = frozenset({_SUCCESS, _ERROR, _ERROR_CODE})


class Route(Protocol):
    async def execute(self, request: bytes) -> bytes: ...

    async def execute_stream(
        self,
        receive: Callable[[], Awaitable[bytes | None]],
        send: Callable[[bytes], Awaitable[None]],
    ) -> None: ...


class Router(Protocol):
    def route(self, namespace: str) -> Route:
        """The plugin serving ``namespace``; raises NotFound for an unknown namespace."""
        ...


def _target(request: bytes) -> tuple[str, str]:
    fields = protowire.scan(request, _REQUEST_FIELDS)
    namespace = protowire.text(fields.get(_NAMESPACE), "namespace")
    operation = protowire.text(fields.get(_OPERATION), "operation")
    if not namespace:
        raise InvalidArgument("namespace is required")
    return namespace, operation


def check_response(response: bytes) -> bytes:
    """A plugin's ExecuteResponse → the same bytes, or its error as a GrpcError."""
    fields = protowire.scan(response, _RESPONSE_FIELDS)
    if fields.get(_SUCCESS):
        return response
    code = fields.get(_ERROR_CODE)
    message = protowire.text(fields.get(_ERROR), "error")
    status = code if isinstance(code, int) and code != Status.OK else Status.UNKNOWN
    raise GrpcError.for_status(status, message or "the plugin reported a failure")


class DataProxyService(pg.Service):
    name = "prism.proxy.v1.DataProxy"

    def __init__(self, router: Router) -> None:
        self.router = router

    @pg.unary_unary("Execute", bytes, bytes)
    async def execute(self, request: bytes, call: pg.ServerCall) -> bytes:
        namespace, operation = _target(request)
        if not operation:
            raise InvalidArgument("operation is required")
        return check_response(await self.router.route(namespace).execute(request))

    @pg.stream_stream("ExecuteStream", bytes, bytes)
    async def execute_stream(self, call: pg.ServerCall) -> None:
        first: bytes | None = await call.receive_message()
        if first is None:
            raise InvalidArgument("the stream ended before its first request")
        namespace, operation = _target(first)
        if not operation:
            raise InvalidArgument("the first request of a stream must name its operation")
        route = self.router.route(namespace)
        pending: list[bytes] = [first]

        async def receive() -> bytes | None:
            if pending:
                return pending.pop()
            message: bytes | None = await call.receive_message()
            return message

        try:
            await route.execute_stream(receive, call.send_message)
        except GrpcError as exc:
            if exc.status == Status.RESOURCE_EXHAUSTED:
                # The plugin cut the stream (a subscriber that fell behind): what flow control
                # still holds back for this client goes, so the status reaches it at once
                # instead of after the backlog it is about.
                call.discard_unsent()
            raise
