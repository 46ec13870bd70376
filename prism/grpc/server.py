"""The Trio gRPC server: listeners → one nursery per connection → one task per RPC."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from prism.grpc import transport
from prism.grpc.connection import LINGER, Connection
from prism.grpc.interceptor import ServerInterceptor
from prism.grpc.service import RpcMethod, Service
from prism.grpc.tls import TLSStream
from prism.grpc.wire.compression import check_encoding
from prism.grpc.wire.flood import FloodLimits
from prism.grpc.wire.h2conn import Settings

log = logging.getLogger("prism.grpc.server")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How a :class:`Server` treats its connections; docs/grpc-api.md explains every field."""

    # Messages and HTTP/2 settings.
    max_receive_message_size: int = 4 << 20
    max_send_message_size: int | None = None
    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    max_frame_size: int = 1 << 14
    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16 << 10
    # Keepalive: our pings, and the policy for the client's (grpc-go's EnforcementPolicy).
    keepalive_time: float | None = None
    keepalive_timeout: float = 20.0
    keepalive_min_time: float = 300.0
    keepalive_permit_without_stream: bool = False
    # Connection lifetime and numbers (grpc-go's keepalive.ServerParameters names).
    handshake_timeout: float = 10.0
    max_connection_idle: float | None = None
    max_connection_age: float | None = None
    max_connection_age_grace: float | None = None
    max_concurrent_connections: int | None = 10_000
    # Flood budgets per connection, per sliding window of flood_window seconds.
    flood_window: float = 10.0
    max_resets_per_window: int = 1000
    max_pings_per_window: int = 1000
    max_settings_per_window: int = 100
    #: Compress responses with this encoding ("gzip", "deflate") when the client accepts it.
    compression: str | None = None
    #: Seconds a client stream's reads wait for more of its messages once a read emptied the
    #: socket (client-streaming calls alone on their connection; 0: read as data arrives).
    client_stream_gather: float = 0.001

    def __post_init__(self) -> None:
        check_encoding(self.compression, "ServerOptions.compression")
        for name in ("handshake_timeout", "keepalive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        for name in (
            "keepalive_time",
            "max_connection_idle",
            "max_connection_age",
            "max_connection_age_grace",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value}")
        if not 0 <= self.client_stream_gather <= 0.1:
            raise ValueError(
                f"client_stream_gather must be between 0 and 0.1 s, not {self.client_stream_gather}"
            )
        if self.max_concurrent_connections is not None and self.max_concurrent_connections < 1:
            raise ValueError(
                f"max_concurrent_connections must be >= 1 or None, not "
                f"{self.max_concurrent_connections}"
            )
        self.flood_limits()  # raises for invalid budgets
        self.h2_settings()  # and for invalid HTTP/2 settings

    def flood_limits(self) -> FloodLimits:
        return FloodLimits(
            window=self.flood_window,
            max_resets=self.max_resets_per_window,
            max_pings=self.max_pings_per_window,
            max_settings=self.max_settings_per_window,
            keepalive_min_time=self.keepalive_min_time,
            keepalive_permit_without_stream=self.keepalive_permit_without_stream,
        )

    def h2_settings(self) -> Settings:
        return Settings(
            initial_window_size=self.initial_window_size,
            connection_window_size=self.connection_window_size,
            max_frame_size=self.max_frame_size,
            max_concurrent_streams=self.max_concurrent_streams,
            max_header_list_size=self.max_header_list_size,
        )


Handler = tuple[RpcMethod, Callable[..., Any]]


@dataclass(slots=True)
class ServerCounters:
    """What a server's connections went through, since it was created. Read-only for users
    (metrics exporters read them); the server increments them."""

    connections_accepted: int = 0
    #: Closed at once: over ``max_concurrent_connections``.
    connections_rejected: int = 0
    #: Closed: no TLS handshake, client preface and SETTINGS within ``handshake_timeout``.
    handshake_timeouts: int = 0
    #: Sent a graceful GOAWAY after ``max_connection_idle`` without an RPC.
    idle_closed: int = 0
    #: Sent a graceful GOAWAY at ``max_connection_age``.
    age_closed: int = 0
    #: Closed with GOAWAY(ENHANCE_YOUR_CALM): over a flood budget, by reason.
    too_many_resets: int = 0
    too_many_pings: int = 0
    too_many_settings: int = 0
    #: Closed with GOAWAY for a broken HTTP/2 peer (PROTOCOL_ERROR, COMPRESSION_ERROR, ...).
    protocol_errors: int = 0


class Server:
    """Serves :class:`Service` objects on any number of listeners.

    Start listeners with ``await nursery.start(server.serve_tcp, host, port)``; stop gracefully
    with :meth:`shutdown`, or cancel the nursery to stop at once. ``interceptors`` run around
    every RPC (:class:`~prism.grpc.interceptor.ServerInterceptor`); :attr:`counters` tells what
    the connections went through (abuse defences, limits).
    """

    def __init__(
        self,
        services: Iterable[Service] = (),
        options: ServerOptions | None = None,
        *,
        interceptors: Sequence[ServerInterceptor] = (),
    ):
        self.options = options or ServerOptions()
        #: Run around every RPC, in this order (prism.grpc.interceptor).
        self.interceptors = tuple(interceptors)
        self._settings = self.options.h2_settings()
        self._flood = self.options.flood_limits()
        self.counters = ServerCounters()
        self._random = random.Random()  # max_connection_age jitter
        self._methods: dict[str, Handler] = {}
        self.services: list[Service] = []
        for service in services:
            self.add_service(service)
        self._connections: set[Connection] = set()
        self._open = 0  # connections accepted and not yet closed (TLS handshakes included)
        self._closing = False
        self._listener_scopes: list[trio.CancelScope] = []
        self._all_closed = trio.Event()
        self._all_closed.set()

    def add_service(self, service: Service) -> None:
        self.services.append(service)
        self._methods.update(service.rpc_methods())

    @property
    def service_names(self) -> list[str]:
        return [s.name for s in self.services]

    @property
    def open_connections(self) -> int:
        """Connections accepted and not closed yet (those still in their handshake too)."""
        return self._open

    # -- listeners --------------------------------------------------------------------------

    async def serve_tcp(
        self,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP; ``task_status.started`` gets the bound ``(host, port)``.

        Runs until cancelled or :meth:`shutdown`.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        await self._serve(listeners, ssl_context, partial(task_status.started, bound))

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o600,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a Unix socket created with ``mode`` (0600: only this user may connect).

        The socket file is removed when serving stops.
        """
        listener = await transport.open_unix_listener(path, mode)
        try:
            await self._serve([listener], ssl_context, partial(task_status.started, str(path)))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _serve(
        self,
        listeners: Sequence[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        started: Callable[[], None],
    ) -> None:
        # Connections live in the outer nursery, accept loops in an inner scope: shutdown()
        # stops accepting (and closes the listeners) while open connections drain.
        async with trio.open_nursery() as connections:
            with trio.CancelScope() as accepting:
                self._listener_scopes.append(accepting)
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
                    self._listener_scopes.remove(accepting)
                    for listener in listeners:
                        listener.socket.close()  # synchronous: no checkpoint to be cancelled at

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
                # EMFILE and friends: back off instead of spinning; the server keeps running.
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            limit = self.options.max_concurrent_connections
            if limit is not None and self._open >= limit:
                # Refused before any work: no task, no TLS, no HTTP/2 (and no log line per
                # connection: a flood of them would flood the log; the counter tells).
                self.counters.connections_rejected += 1
                await trio.aclose_forcefully(stream)
                continue
            self._open += 1
            self.counters.connections_accepted += 1
            transport.set_nodelay(stream)
            if ssl_context is not None:
                assert isinstance(stream, trio.SocketStream)
                stream = TLSStream(stream, ssl_context, server_side=True)
            deadline = trio.current_time() + self.options.handshake_timeout
            nursery.start_soon(self._handle_connection, stream, deadline)

    async def serve_connection(self, stream: trio.abc.Stream, *, received: bytes = b"") -> None:
        """Serve one connection accepted elsewhere, until it closes: for a listener that
        serves other protocols beside gRPC and told them apart by the first bytes
        (``received``: what it read from ``stream``; processed before anything more is read).

        A TLS stream (``prism.grpc.tls.TLSStream`` or ``trio.SSLStream``) may come with its
        handshake done (then ALPN must be h2 or none) or not (it is done here). Limits are the
        server's own: ``max_concurrent_connections`` (over it the stream is closed at once),
        ``handshake_timeout`` from now. The connection is counted in :attr:`open_connections`
        and drained by :meth:`shutdown`. Errors on the connection are logged, never raised;
        cancellation closes it at once.
        """
        limit = self.options.max_concurrent_connections
        if self._closing or (limit is not None and self._open >= limit):
            if not self._closing:
                self.counters.connections_rejected += 1
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        self.counters.connections_accepted += 1
        transport.set_nodelay(stream)
        deadline = trio.current_time() + self.options.handshake_timeout
        await self._handle_connection(stream, deadline, received)

    async def _handle_connection(
        self, stream: trio.abc.Stream, handshake_deadline: float, received: bytes = b""
    ) -> None:
        # The boundary for one connection: nothing that happens on it may end the server.
        conn = Connection(self, stream, handshake_deadline, received)
        self._connections.add(conn)
        if self._all_closed.is_set():
            self._all_closed = trio.Event()
        try:
            await conn.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as eg:
            log.debug("connection %s lost: %r", conn.peer_address, eg.exceptions[0])
        except* Exception as eg:
            log.exception("connection %s failed", conn.peer_address, exc_info=eg)
        finally:
            # Bookkeeping before the await: under cancellation aclose_forcefully raises.
            self._open -= 1
            self._connections.discard(conn)
            if not self._connections:
                self._all_closed.set()
            await trio.aclose_forcefully(stream)

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, send GOAWAY, give in-flight RPCs ``grace`` seconds, then cancel them.

        Listener tasks end; the caller's nursery then finishes normally.
        """
        self._closing = True
        for scope in list(self._listener_scopes):
            scope.cancel()
        for conn in list(self._connections):
            conn.start_shutdown()
        with trio.move_on_after(grace):
            await self._all_closed.wait()
        # Grace is over: cancel the RPCs still running, so their clients get UNAVAILABLE
        # trailers and the connections their final GOAWAY; then drop whatever is left.
        for conn in list(self._connections):
            conn.cancel_calls()
        with trio.move_on_after(LINGER):
            await self._all_closed.wait()
        for conn in list(self._connections):
            conn.cancel()
        with trio.move_on_after(1.0):
            await self._all_closed.wait()

    def lookup(self, method: str) -> Handler | None:
        return self._methods.get(method)
