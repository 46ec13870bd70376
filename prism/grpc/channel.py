"""The Trio gRPC client: a channel owns one HTTP/2 connection at a time, in its own nursery."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import h2.errors
import h2.exceptions
import trio

from prism.grpc import transport
from prism.grpc.call_handles import StreamCall, UnaryCall
from prism.grpc.client_call import ClientCall, Requests
from prism.grpc.wire.client_conn import ClientConnection
from prism.grpc.wire.compression import check_encoding
from prism.grpc.wire.events import (
    GoAwayReceived,
    MessageReceived,
    PingAcknowledged,
    ResponseEnded,
    ResponseHeadersReceived,
    StreamAborted,
    WindowUpdated,
)
from prism.grpc.wire.h2conn import Settings
from prism.grpc.wire.metadata import MetadataLike
from prism.grpc.wire.status import Unavailable

__all__ = [
    "Channel",
    "ChannelOptions",
    "ClientCall",
    "StreamCall",
    "UnaryCall",
    "open_channel",
]

log = logging.getLogger("prism.grpc.channel")

T = TypeVar("T")

_RECEIVE_SIZE = 1 << 16
_MAX_RECEIVE_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    max_receive_message_size: int = 4 << 20
    max_send_message_size: int | None = None
    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    max_frame_size: int = 1 << 14
    user_agent: str = "prism-grpc/0.1"
    #: Compress request messages with this encoding ("gzip", "deflate") unless a call says
    #: otherwise. Responses in any supported encoding are accepted whatever this is.
    compression: str | None = None

    def __post_init__(self) -> None:
        check_encoding(self.compression, "ChannelOptions.compression")


@asynccontextmanager
async def open_channel(
    target: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    options: ChannelOptions | None = None,
) -> AsyncIterator[Channel]:
    """A channel to ``target`` (``host:port`` or ``unix:/path``) for the duration of the block.

    Connects lazily on the first call; leaving the block cancels calls still running and
    closes the connection. What the block raises comes out as itself (the channel's own tasks
    never fail), not wrapped in an ``ExceptionGroup``: ``except pg.NotFound`` around the block
    works.
    """
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            channel = Channel(target, nursery, ssl_context, server_hostname, options)
            try:
                yield channel
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                channel.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_error is not None and list(group.exceptions) == [body_error]:
            raise body_error from None
        raise


class Channel:
    def __init__(
        self,
        target: str,
        nursery: trio.Nursery,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        options: ChannelOptions | None = None,
    ) -> None:
        self.target = target
        self.options = options or ChannelOptions()
        self._nursery = nursery
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._conn: _ClientConnection | None = None
        self._connect_lock = trio.Lock()
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()

    async def connection(self) -> _ClientConnection:
        """The live connection, connecting first if there is none (raises Unavailable)."""
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        async with self._connect_lock:
            if self._closed:
                raise Unavailable("channel is closed")
            if self._conn is None or not self._conn.usable:
                stream = await transport.connect(self.target, self._ssl, self._server_hostname)
                authority = self._server_hostname or (
                    "localhost" if self.target.startswith("unix:") else self.target
                )
                conn = _ClientConnection(self, stream, authority)
                await conn.send_preface()
                await self._nursery.start(conn.run)
                self._conn = conn
            return self._conn

    # -- calls ------------------------------------------------------------------------------
    #
    # Every call takes ``metadata`` (custom metadata to send), ``compression`` (the request
    # messages' encoding: "gzip", "deflate", or "identity" for none; None = the channel's
    # default) and ``timeout`` (seconds: the call's deadline; past it the call is cancelled and
    # raises DeadlineExceeded). Response types are betterproto2 message classes, or ``bytes``
    # for the raw message.

    def unary_unary(
        self,
        method: str,
        request: Any,
        response_type: type[T],
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
        timeout: float | None = None,
    ) -> UnaryCall[T]:
        """One request, one response: ``reply = await channel.unary_unary(...)``; the returned
        call also has the response's metadata and status once awaited."""
        call = ClientCall(self, method, response_type, metadata, request, compression, timeout)
        return UnaryCall(call, None)

    def unary_stream(
        self,
        method: str,
        request: Any,
        response_type: type[T],
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
        timeout: float | None = None,
    ) -> StreamCall[T]:
        """One request, a stream of responses: ``async for reply in channel.unary_stream(...)``
        (or ``async with ... as call: async for reply in call``)."""
        call = ClientCall(self, method, response_type, metadata, request, compression, timeout)
        return StreamCall(call, None)

    def stream_unary(
        self,
        method: str,
        requests: Requests,
        response_type: type[T],
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
        timeout: float | None = None,
    ) -> UnaryCall[T]:
        """A stream of requests (any iterable or async iterable), one response:
        ``reply = await channel.stream_unary(...)``. The requests are sent by the awaiting task,
        each as soon as flow control allows; sending stops if the server ends the call early."""
        call = ClientCall(self, method, response_type, metadata, None, compression, timeout)
        return UnaryCall(call, requests)

    def stream_stream(
        self,
        method: str,
        requests: Requests,
        response_type: type[T],
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
        timeout: float | None = None,
    ) -> StreamCall[T]:
        """Requests from an iterable or async iterable, sent by a task of the channel while
        the caller iterates over the responses: ``async for reply in channel.stream_stream(...)``.
        Use :meth:`stream` to interleave sends and receives by hand."""
        call = ClientCall(self, method, response_type, metadata, None, compression, timeout)
        return StreamCall(call, requests)

    def stream(
        self,
        method: str,
        response_type: type[T],
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
        timeout: float | None = None,
    ) -> ClientCall[T]:
        """A call of any shape, driven by hand: ``async with channel.stream(...) as call:``,
        then ``send_message``, ``end``, ``receive_message`` / ``async for``."""
        return ClientCall(self, method, response_type, metadata, None, compression, timeout)


class _ClientConnection:
    def __init__(self, channel: Channel, stream: trio.abc.Stream, authority: str) -> None:
        opts = channel.options
        self.channel = channel
        self.stream = stream
        self.conn = ClientConnection(
            Settings(
                initial_window_size=opts.initial_window_size,
                connection_window_size=opts.connection_window_size,
                max_frame_size=opts.max_frame_size,
            ),
            authority=authority,
            scheme="https" if transport.is_tls(stream) else "http",
            user_agent=opts.user_agent,
            max_receive_message_size=opts.max_receive_message_size,
        )
        self.calls: dict[int, ClientCall[Any]] = {}
        # Calls still waiting for their response headers: the output of calls that start
        # together is batched into one write (transport.Output) while more than one waits.
        # Streams that are under way (a health Watch held open for the connection's life)
        # produce no output to batch, and would otherwise send every call of a remote
        # plugin through the writer task.
        self.opening: set[int] = set()
        self._output = transport.Output(stream, self.conn, self.opening)
        self.kick = self._output.kick
        self.schedule_write = self._output.schedule
        self._window = trio.Event()
        self._stream_closed = trio.Event()
        self._scope = trio.CancelScope()
        self._dead = False

    @property
    def usable(self) -> bool:
        return not self._dead and self.conn.goaway_received is None and not self.conn.closed

    def close(self) -> None:
        self._dead = True
        self.conn.close()
        self.kick()

    def stream_closed_event(self) -> trio.Event:
        return self._stream_closed

    def notify_stream_closed(self) -> None:
        self._stream_closed.set()
        self._stream_closed = trio.Event()

    async def wait_writable(self, stream_id: int, call: ClientCall[Any]) -> None:
        """Block while more than a window's worth is queued on the stream (back-pressure),
        until the call or the connection ends."""
        limit = self.conn.settings.initial_window_size
        while self.conn.pending(stream_id) > limit and not self._dead and not call._ended:
            await self._window.wait()

    def wake_writers(self) -> None:
        self._window.set()
        self._window = trio.Event()

    async def send_preface(self) -> None:
        """Send the client preface and SETTINGS; failure raises Unavailable (and closes)."""
        self.conn.initiate_connection()
        try:
            await self.stream.send_all(self.conn.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            await trio.aclose_forcefully(self.stream)
            raise Unavailable(f"cannot connect to {self.channel.target}: {exc}") from exc

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the socket: reader and writer tasks. Ends when the connection does; calls still
        open then fail with UNAVAILABLE."""
        try:
            with self._scope:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as eg:
            log.debug("connection to %s lost: %r", self.channel.target, eg.exceptions[0])
        finally:
            self._dead = True
            for call in list(self.calls.values()):
                call.on_abort(Unavailable(f"connection to {self.channel.target} lost"))
            self.calls.clear()
            self.opening.clear()
            self._window.set()
            self.notify_stream_closed()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await trio.aclose_forcefully(self.stream)

    async def _reader(self) -> None:
        conn = self.conn
        receive = transport.Input(self.stream).receive
        size = _RECEIVE_SIZE
        while True:
            data = await receive(size)
            if not data:
                return
            # Bulk transfers fill every read: read more at a time (fewer trips through h2).
            if len(data) == size:
                size = min(size * 2, _MAX_RECEIVE_SIZE)
            elif size > _RECEIVE_SIZE and len(data) < size // 4:
                size = _RECEIVE_SIZE
            if conn.closed:
                continue  # the writer sends our GOAWAY, then ends the connection
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.warning(
                    "closing connection to %s: HTTP/2 protocol error: %s", self.channel.target, exc
                )
                # Only the writer sends (two tasks may not send_all at once).
                conn.close(h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self._dead = True
                self.kick()
                continue
            for event in events:
                if type(event) is MessageReceived:
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.feed(event.message)
                elif type(event) is ResponseEnded:
                    self.opening.discard(event.stream_id)
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.on_end(event.status, event.message, event.trailers)
                        self.wake_writers()  # a sender parked on this call must return
                elif type(event) is ResponseHeadersReceived:
                    self.opening.discard(event.stream_id)
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.on_headers(event.metadata, event.encoding)
                elif type(event) is StreamAborted:
                    self.opening.discard(event.stream_id)
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.on_abort(event.error)
                        self.wake_writers()
                elif type(event) is WindowUpdated:
                    self.wake_writers()
                elif type(event) is GoAwayReceived:
                    self.notify_stream_closed()
                    if event.error_code or not self.calls:
                        return
                elif type(event) is PingAcknowledged:
                    pass
            if conn.goaway_received is not None and not self.calls:
                return
            self.kick()

    async def _writer(self) -> None:
        await self._output.write_loop(self.stream.send_all, self._closed_out)

    async def _closed_out(self) -> None:
        self._scope.cancel()
