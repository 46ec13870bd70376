"""The admin port: one listener, the admin API over gRPC and HTTP/1.1 side by side.

RFC-008 puts the admin API at ``https://proxy:50052/admin/...`` and the CLI speaks gRPC to the
same address, so each connection is told apart by what comes first: ALPN when TLS negotiated
one (``h2`` → gRPC, ``http/1.1`` → HTTP), else its first bytes: the HTTP/2 client preface
(``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``, which no HTTP/1.1 request starts with) goes to the
admin gRPC server (``prism.grpc.Server.serve_connection``), anything else to the HTTP/1.1
server (:mod:`prism.proxy.http`), each with the bytes already read.

The TLS handshake and those first bytes must arrive within ``handshake_timeout``; at most
``max_connections`` connections are open at once (more are closed as they arrive); the
servers behind enforce their own limits from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from functools import partial

import trio

from prism import grpc as pg
from prism.grpc import transport
from prism.proxy.http import HttpServer

__all__ = ["PREFACE", "AdminPort", "admin_ssl_context"]

log = logging.getLogger("prism.admin")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_RECEIVE_SIZE = 1 << 14


def admin_ssl_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """The front door's server TLS, offering both of the admin port's protocols by ALPN."""
    context = pg.server_ssl_context(cert, key, client_ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class AdminPort:
    """Listeners that hand each connection to ``grpc`` or ``http`` (module docstring)."""

    def __init__(
        self,
        grpc: pg.Server,
        http: HttpServer,
        *,
        max_connections: int = 256,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.grpc = grpc
        self.http = http
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._open = 0
        self._accepting: list[trio.CancelScope] = []
        self._sniffing: set[trio.CancelScope] = set()
        self._closing = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def serve_tcp(
        self,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP, with TLS when ``ssl_context`` is given (``admin_ssl_context``);
        ``started`` with the bound ``(host, port)``. Runs until cancelled or :meth:`shutdown`."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        await self._serve(listeners, ssl_context, partial(task_status.started, bound))

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o600,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a Unix socket created with ``mode`` (plaintext: the socket's mode decides
        who may connect); removed when serving stops."""
        listener = await transport.open_unix_listener(path, mode)
        try:
            await self._serve([listener], None, partial(task_status.started, str(path)))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; both servers drain their connections within ``grace``."""
        self._closing = True
        for scope in list(self._accepting):
            scope.cancel()
        for scope in list(self._sniffing):
            scope.cancel()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.grpc.shutdown, grace)
            nursery.start_soon(self.http.shutdown, grace)

    async def _serve(
        self,
        listeners: Sequence[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        started: Callable[[], None],
    ) -> None:
        async with trio.open_nursery() as connections:
            with trio.CancelScope() as accepting:
                self._accepting.append(accepting)
                if self._closing:
                    accepting.cancel()
                try:
                    async with trio.open_nursery() as nursery:
                        for listener in listeners:
                            nursery.start_soon(
                                self._accept_loop, listener, ssl_context, connections
                            )
                        started()
                finally:
                    self._accepting.remove(accepting)
                    for listener in listeners:
                        listener.socket.close()

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        ssl_context: ssl.SSLContext | None,
        nursery: trio.Nursery,
    ) -> None:
        while True:
            try:
                stream: trio.abc.Stream = await listener.accept()
            except OSError as exc:
                log.warning("admin port: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self._open >= self.max_connections:
                await trio.aclose_forcefully(stream)
                continue
            self._open += 1
            nursery.start_soon(self._handle, stream, ssl_context)

    async def _handle(self, stream: trio.abc.Stream, ssl_context: ssl.SSLContext | None) -> None:
        try:
            chosen = await self._choose(stream, ssl_context)
            if chosen is None:
                return
            stream, serve_grpc, received = chosen
            if serve_grpc:
                await self.grpc.serve_connection(stream, received=received)
            else:
                await self.http.serve_connection(stream, received=received)
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)

    async def _choose(
        self, stream: trio.abc.Stream, ssl_context: ssl.SSLContext | None
    ) -> tuple[trio.abc.Stream, bool, bytes] | None:
        """``(stream, for gRPC?, bytes read)``, or None when the connection is to be closed."""
        address = "?"
        with trio.CancelScope(deadline=trio.current_time() + self.handshake_timeout) as scope:
            self._sniffing.add(scope)
            try:
                address = transport.peer_info(stream).address
                if ssl_context is not None:
                    tls = trio.SSLStream(stream, ssl_context, server_side=True)
                    stream = tls
                    await tls.do_handshake()
                    alpn = tls.selected_alpn_protocol()
                    if alpn is not None:
                        return stream, alpn == "h2", b""
                received = await _first_bytes(stream)
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                ssl.SSLError,
                OSError,
            ) as exc:
                log.info(
                    "admin port: connection from %s dropped: %s",
                    address,
                    transport.describe_error(exc),
                )
                return None
            finally:
                self._sniffing.discard(scope)
        if scope.cancelled_caught:
            if not self._closing:
                log.info("admin port: connection from %s dropped: nothing sent in time", address)
            return None
        if not received:
            return None
        return stream, received.startswith(PREFACE), received


async def _first_bytes(stream: trio.abc.Stream) -> bytes:
    """Read until the bytes are the HTTP/2 preface, or cannot be (b"" at end of stream)."""
    received = b""
    while len(received) < len(PREFACE) and PREFACE.startswith(received):
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            return b""
        received += data
    return received
