"""The Trio gRPC server: listeners → one nursery per connection → one task per RPC."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import h2.errors
import h2.exceptions
import trio

from prism.grpc import transport
from prism.grpc.call import ServerCall, error_from_exception
from prism.grpc.service import RpcMethod, Service
from prism.grpc.tls import TLSStream
from prism.grpc.wire.compression import check_encoding
from prism.grpc.wire.events import (
    GoAwayReceived,
    InputEnded,
    MessageReceived,
    PingAcknowledged,
    RequestReceived,
    StreamAborted,
    WindowUpdated,
)
from prism.grpc.wire.h2conn import Settings
from prism.grpc.wire.metadata import MetadataError
from prism.grpc.wire.metadata import validate as validate_metadata
from prism.grpc.wire.server_conn import ServerConnection
from prism.grpc.wire.status import Status, Unavailable

log = logging.getLogger("prism.grpc.server")

_RECEIVE_SIZE = 1 << 16
_MAX_RECEIVE_SIZE = 1 << 20
_STREAM_GONE = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError)
# Time a new connection gets to finish its TLS handshake.
_HANDSHAKE_GRACE = 10.0
# After the final GOAWAY: how long to wait for the peer to close before we do.
_LINGER = 1.0


@dataclass(frozen=True, slots=True)
class ServerOptions:
    max_receive_message_size: int = 4 << 20
    max_send_message_size: int | None = None
    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    max_frame_size: int = 1 << 14
    max_concurrent_streams: int = 1000
    keepalive_time: float | None = None
    keepalive_timeout: float = 20.0
    #: Compress responses with this encoding ("gzip", "deflate") when the client accepts it.
    compression: str | None = None

    def __post_init__(self) -> None:
        check_encoding(self.compression, "ServerOptions.compression")

    def h2_settings(self) -> Settings:
        return Settings(
            initial_window_size=self.initial_window_size,
            connection_window_size=self.connection_window_size,
            max_frame_size=self.max_frame_size,
            max_concurrent_streams=self.max_concurrent_streams,
        )


Handler = tuple[RpcMethod, Callable[..., Any]]


class Server:
    """Serves :class:`Service` objects on any number of listeners.

    Start listeners with ``await nursery.start(server.serve_tcp, host, port)``; stop gracefully
    with :meth:`shutdown`, or cancel the nursery to stop at once.
    """

    def __init__(self, services: Iterable[Service] = (), options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        self.options.h2_settings()  # invalid HTTP/2 settings fail here, not per connection
        self._methods: dict[str, Handler] = {}
        self.services: list[Service] = []
        for service in services:
            self.add_service(service)
        self._connections: set[_Connection] = set()
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
            transport.set_nodelay(stream)
            if ssl_context is not None:
                assert isinstance(stream, trio.SocketStream)
                stream = TLSStream(stream, ssl_context, server_side=True)
            nursery.start_soon(self._handle_connection, stream)

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        # The boundary for one connection: nothing that happens on it may end the server.
        conn = _Connection(self, stream)
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
        with trio.move_on_after(_LINGER):
            await self._all_closed.wait()
        for conn in list(self._connections):
            conn.cancel()
        with trio.move_on_after(1.0):
            await self._all_closed.wait()

    def lookup(self, method: str) -> Handler | None:
        return self._methods.get(method)


class _Connection:
    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        opts = server.options
        self.conn = ServerConnection(
            opts.h2_settings(),
            max_receive_message_size=opts.max_receive_message_size,
            compression=opts.compression,
        )
        self.calls: dict[int, ServerCall] = {}
        self.peer = transport.PeerInfo("?", "tcp")
        self.peer_address = "?"
        self._output = transport.Output(stream, self.conn, self.calls)
        self.kick = self._output.kick
        self.schedule_write = self._output.schedule
        self._window = trio.Event()
        self._ping_ack = trio.Event()
        self._peer_closed = trio.Event()
        self._scope = trio.CancelScope()
        self._rpc_nursery: trio.Nursery | None = None
        self._closing = False
        self._initiated = False  # the HTTP/2 connection exists (TLS handshake done)

    # The pieces ServerCall uses --------------------------------------------------------------

    async def wait_writable(self, stream_id: int) -> None:
        """Block while ``stream_id`` has more than one window's worth queued (back-pressure)."""
        limit = self.conn.settings.initial_window_size
        while self.conn.pending(stream_id) > limit:
            self.kick()  # what is queued must go out for the window to reopen
            await self._window.wait()

    # ------------------------------------------------------------------------------------

    async def run(self) -> None:
        with self._scope:
            with trio.move_on_after(_HANDSHAKE_GRACE) as handshake:
                if isinstance(self.stream, TLSStream):
                    try:
                        await self.stream.do_handshake()
                    except (trio.BrokenResourceError, ssl.SSLError) as exc:
                        log.warning(
                            "TLS handshake with %s rejected: %s",
                            transport.peer_info(self.stream.transport_stream).address,
                            transport.describe_error(exc),
                        )
                        return
                    transport.check_alpn(self.stream)
            if handshake.cancelled_caught:
                log.info("connection dropped: TLS handshake not completed in time")
                return
            self.peer = transport.peer_info(self.stream)
            self.peer_address = self.peer.address
            self.conn.initiate_connection()
            self._initiated = True
            await self.stream.send_all(self.conn.data_to_send())
            async with trio.open_nursery() as nursery:
                self._rpc_nursery = nursery
                nursery.start_soon(self._writer)
                if self.server.options.keepalive_time:
                    nursery.start_soon(self._keepalive, self.server.options.keepalive_time)
                if self.server._closing:
                    self.start_shutdown()
                await self._reader()
                nursery.cancel_scope.cancel()

    def cancel(self) -> None:
        self._scope.cancel()

    def cancel_calls(self) -> None:
        for call in list(self.calls.values()):
            call.cancel()

    def start_shutdown(self) -> None:
        if not self._initiated:
            self._scope.cancel()  # still in the TLS handshake: nothing in flight to drain
            return
        if not self._closing:
            self._closing = True
            self.conn.start_shutdown()
            self.kick()
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._closing and not self.calls and not self.conn.has_pending_output():
            self.conn.close()
            self.kick()

    async def _reader(self) -> None:
        conn = self.conn
        receive = transport.Input(self.stream).receive
        size = _RECEIVE_SIZE
        while True:
            data = await receive(size)
            if not data:
                self._peer_closed.set()
                return
            # Bulk transfers fill every read: read more at a time (fewer trips through h2).
            if len(data) == size:
                size = min(size * 2, _MAX_RECEIVE_SIZE)
            elif size > _RECEIVE_SIZE and len(data) < size // 4:
                size = _RECEIVE_SIZE
            if conn.closed:
                continue  # after our final GOAWAY: discard input until the peer closes
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.info(
                    "closing connection from %s: HTTP/2 protocol error: %s", self.peer_address, exc
                )
                # The writer sends the GOAWAY (two tasks may not send_all at once).
                conn.close(h2.errors.ErrorCodes.PROTOCOL_ERROR, str(exc).encode()[:200])
                self.kick()
                continue
            for event in events:
                if type(event) is MessageReceived:
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.feed(event.message)
                elif type(event) is RequestReceived:
                    self._start_call(event)
                elif type(event) is InputEnded:
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.end_input()
                elif type(event) is StreamAborted:
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.abort(event.error)
                elif type(event) is WindowUpdated:
                    self._window.set()
                    self._window = trio.Event()
                elif type(event) is PingAcknowledged:
                    self._ping_ack.set()
                elif type(event) is GoAwayReceived:
                    if event.error_code:
                        return
                    self.start_shutdown()
            self._maybe_finish()
            self.kick()

    async def _writer(self) -> None:
        await self._output.write_loop(self.stream.send_all, self._linger)

    async def _linger(self) -> None:
        # The final GOAWAY is out. Let the peer read it and close first: closing with unread
        # input makes the kernel send a TCP reset, which can destroy the GOAWAY and last
        # responses before the peer reads them.
        with trio.move_on_after(_LINGER):
            await self._peer_closed.wait()
        self._scope.cancel()

    async def _keepalive(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self._ping_ack = trio.Event()
            self.conn.send_ping(os.urandom(8))
            self.kick()
            with trio.move_on_after(self.server.options.keepalive_timeout) as scope:
                await self._ping_ack.wait()
            if scope.cancelled_caught:
                log.info(
                    "closing connection from %s: keepalive ping not answered", self.peer_address
                )
                self.conn.close(h2.errors.ErrorCodes.NO_ERROR, b"keepalive timeout")
                self.kick()
                return

    def _start_call(self, event: RequestReceived) -> None:
        handler = self.server.lookup(event.method)
        sid = event.stream_id
        if handler is None:
            self.conn.send_trailers(sid, Status.UNIMPLEMENTED, f"unknown method {event.method}")
            self.conn.finish(sid)
            return
        deadline = trio.current_time() + event.timeout if event.timeout is not None else math.inf
        call = ServerCall(self, sid, event.method, event.metadata, self.peer, deadline, handler[0])
        self.calls[sid] = call
        assert self._rpc_nursery is not None
        self._rpc_nursery.start_soon(self._run_call, call, handler[1])

    async def _run_call(self, call: ServerCall, func: Callable[..., Any]) -> None:
        # The boundary for one RPC: whatever happens here ends this stream, never the connection.
        status, message, extra = Status.OK, "", []
        try:
            with trio.CancelScope(deadline=call.deadline) as scope:
                call.scope = scope
                if call.cancelled or call.aborted is not None:  # before the task started
                    scope.cancel()
                await call.invoke(func)
            if scope.cancelled_caught and call.aborted is None:
                if call.cancelled:
                    status, message = Unavailable.status, "the server is shutting down"
                else:
                    status, message = Status.DEADLINE_EXCEEDED, "deadline exceeded"
        except Exception as exc:
            error = error_from_exception(exc, call.method)
            status, message, extra = error.status, error.message, error.trailers
        finally:
            if call.aborted is None:
                # Read the trailing metadata only now: the handler may have set it any time.
                trailers = call.trailing_metadata
                if extra:
                    trailers = [*trailers, *extra]
                if trailers:
                    try:
                        validate_metadata(trailers)
                    except MetadataError as exc:  # e.g. a GrpcError carrying reserved keys
                        log.error("%s: cannot send trailers: %s", call.method, exc)
                        status, message, trailers = Status.INTERNAL, "invalid trailing metadata", []
                try:  # noqa: SIM105 (contextlib.suppress costs a context manager per RPC)
                    self.conn.send_trailers(call.stream_id, status, message, trailers)
                except _STREAM_GONE:
                    pass
            self.conn.finish(call.stream_id)
            self.calls.pop(call.stream_id, None)
            self._maybe_finish()
            self.kick()
