"""A small HTTP/1.1 server on Trio, for the admin port: h11 underneath, a route table on top.

Why h11 and not hypercorn: the admin port serves gRPC and HTTP/1.1 on one listener, told
apart by a connection's first bytes (:mod:`prism.proxy.adminport`), so the HTTP side must take
over a connection someone else accepted, with the bytes already read from it. h11 is sans-IO
(by the h2 authors, the same model as the gRPC stack's h2): about 2,500 lines, no
dependencies, already installed with httpx, and every limit below is ours to set and test.
hypercorn is a whole ASGI server: it owns its listeners, workers and lifespan, pulls in h2,
wsproto, priority and more, and would put an ASGI layer between a route and its JSON; its
limits are its own configuration's.

Limits (:class:`HttpLimits`), all per connection: a request's head (request line and headers)
and its body are bounded in size (431 and 413 beyond); a request must arrive whole within
``request_timeout`` of its first byte (slowloris: 408), the next request of a kept-alive
connection start within ``keepalive_timeout`` (the connection is closed), a response be taken
by the client within ``send_timeout``. A malformed request gets 400 and its connection is
closed; nothing on one connection ends the server or another connection. A handler's bug is a
500 that names a trace id, logged with its traceback; the client never sees internals.
"""

from __future__ import annotations

import http
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio

from prism.grpc import traceid, transport
from prism.grpc.transport import PeerInfo

__all__ = [
    "Handler",
    "HttpError",
    "HttpLimits",
    "HttpServer",
    "Request",
    "Response",
    "Routes",
]

log = logging.getLogger("prism.proxy.http")

_RECEIVE_SIZE = 1 << 14
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


@dataclass(frozen=True, slots=True)
class HttpLimits:
    #: Bytes of a request line and its headers (431 beyond).
    max_head: int = 16 << 10
    #: Bytes of a request body (413 beyond).
    max_body: int = 1 << 20
    #: Seconds from a request's first byte to its last (408 beyond: slow clients, slowloris).
    request_timeout: float = 10.0
    #: Seconds a kept-alive connection may wait for its next request before it is closed.
    keepalive_timeout: float = 30.0
    #: Seconds the client has to take a response before its connection is dropped.
    send_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # upper case; a HEAD request is served by the GET route
    path: str  # without the query
    query: str
    #: Names in lower case, values as sent (latin-1).
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer: PeerInfo

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        """The body as JSON; 400 when it is not."""
        try:
            return json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the request body is not valid JSON") from None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        body = json.dumps(value, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        return cls(status, body, "application/json")


class HttpError(Exception):
    """Raise from a handler to answer ``status`` with ``message`` (as JSON: ``{"error": ...}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return Response.json({"error": self.message}, self.status)


Handler = Callable[[Request], Awaitable[Response]]


class Routes:
    """Method + path → handler. 404 for an unknown path, 405 (with ``Allow``) for a known path
    and another method."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        methods = self._routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} already has a handler")
        methods[method] = handler

    def handler(self, method: str, path: str) -> Handler:
        methods = self._routes.get(path)
        if methods is None:
            raise HttpError(404, f"no such path: {path}")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            raise _MethodNotAllowed(allowed)
        return handler


class _MethodNotAllowed(HttpError):
    def __init__(self, allowed: str) -> None:
        super().__init__(405, "method not allowed")
        self.allowed = allowed

    def response(self) -> Response:
        response = super().response()
        return Response(
            response.status, response.body, response.content_type, (("allow", self.allowed),)
        )


class HttpServer:
    """Serves :class:`Routes` on connections handed to :meth:`serve_connection`."""

    def __init__(self, routes: Routes, limits: HttpLimits | None = None) -> None:
        self.routes = routes
        self.limits = limits or HttpLimits()
        self._connections: set[_Connection] = set()
        self._all_closed = trio.Event()
        self._all_closed.set()
        self.closing = False

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def serve_connection(
        self, stream: trio.abc.Stream, *, received: bytes = b"", peer: PeerInfo | None = None
    ) -> None:
        """Serve requests on ``stream`` until the client closes it, a limit or an error ends
        it, or :meth:`shutdown`. ``received``: bytes already read from it (they come first).
        Errors are logged, never raised; cancellation closes the connection at once."""
        conn = _Connection(self, stream, peer or transport.peer_info(stream))
        self._connections.add(conn)
        if self._all_closed.is_set():
            self._all_closed = trio.Event()
        try:
            with conn.scope:
                await conn.run(received)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.debug("HTTP connection %s lost: %r", conn.peer.address, exc)
        except Exception:
            log.exception("HTTP connection %s failed", conn.peer.address)
        finally:
            self._connections.discard(conn)
            if not self._connections:
                self._all_closed.set()
            await trio.aclose_forcefully(stream)

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; let requests in progress finish within ``grace``
        seconds (their responses say ``Connection: close``), then close what is left."""
        self.closing = True
        for conn in list(self._connections):
            if conn.idle:
                conn.scope.cancel()
        with trio.move_on_after(grace):
            await self._all_closed.wait()
        for conn in list(self._connections):
            conn.scope.cancel()


class _Connection:
    def __init__(self, server: HttpServer, stream: trio.abc.Stream, peer: PeerInfo) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self.limits = server.limits
        self.scope = trio.CancelScope()
        self.idle = True  # waiting for a request's first byte (shutdown closes it at once)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)

    async def run(self, received: bytes) -> None:
        if received:
            self.h11.receive_data(received)
        first = True
        while not self.server.closing or first:
            request = await self._read_request(first)
            first = False
            if request is None:
                return
            response = await self._handle(request)
            if not await self._send(response, head=request.method == "HEAD"):
                return
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # a response before the whole request (413), or Connection: close
            self.h11.start_next_cycle()

    async def _read_request(self, first: bool) -> Request | None:
        conn, limits = self.h11, self.limits
        started = first or bool(conn.trailing_data[0])
        deadline = trio.current_time() + (
            limits.request_timeout if started else limits.keepalive_timeout
        )
        self.idle = not started
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # error_status_hint: 431 for a head over max_head, else 400.
                await self._send_error(HttpError(exc.error_status_hint, f"bad request: {exc}"))
                return None
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self._write(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data: bytes | bytearray = b""
                with trio.move_on_at(deadline):
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        conn.receive_data(b"")  # the client closed its side
                        continue
                if not data:  # timed out
                    if started:
                        await self._send_error(HttpError(408, "request not received in time"))
                    return None
                if not started:
                    started, self.idle = True, False
                    deadline = trio.current_time() + limits.request_timeout
                conn.receive_data(bytes(data))
            elif type(event) is h11.Request:
                head = event
                # h11 bounds a head still arriving (max_incomplete_event_size); one that came
                # whole in a single read is measured here.
                if _head_size(event) > limits.max_head:
                    await self._send_error(HttpError(431, "request header fields too large"))
                    return None
                length = _content_length(event)
                if length is not None and length > limits.max_body:
                    await self._send_error(HttpError(413, "request body too large"))
                    return None
            elif type(event) is h11.Data:
                body += event.data
                if len(body) > limits.max_body:
                    await self._send_error(HttpError(413, "request body too large"))
                    return None
            elif type(event) is h11.EndOfMessage:
                assert head is not None
                target = head.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                return Request(
                    head.method.decode("ascii", "replace").upper(),
                    path,
                    query,
                    tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
                    bytes(body),
                    self.peer,
                )
            else:  # ConnectionClosed, PAUSED
                return None

    async def _handle(self, request: Request) -> Response:
        try:
            handler = self.server.routes.handler(request.method, request.path)
            return await handler(request)
        except HttpError as exc:
            return exc.response()
        except Exception:
            trace_id = traceid.from_traceparent(request.headers)
            log.exception(
                "%s %s failed (trace id %s)",
                request.method,
                request.path,
                trace_id,
                extra={"trace_id": trace_id},
            )
            return HttpError(500, f"internal error (trace id {trace_id})").response()

    async def _send_error(self, error: HttpError) -> None:
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(error.response(), close=True)

    async def _send(self, response: Response, *, head: bool = False, close: bool = False) -> bool:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        if close or self.server.closing:
            headers.append(("connection", "close"))
        conn = self.h11
        reason = _REASONS.get(response.status, b"")
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body and not head:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
        return await self._write(data)

    async def _write(self, data: bytes) -> bool:
        with trio.move_on_after(self.limits.send_timeout):
            await self.stream.send_all(data)
            return True
        log.info("HTTP connection %s dropped: the response was not taken", self.peer.address)
        return False


def _head_size(request: h11.Request) -> int:
    return (
        len(request.method)
        + len(request.target)
        + sum(len(name) + len(value) + 4 for name, value in request.headers)
    )


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return None
