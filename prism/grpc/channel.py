"""The Trio gRPC client: a channel owns one HTTP/2 connection at a time, in its own nursery."""

from __future__ import annotations

import collections
import logging
import math
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import h2.errors
import h2.exceptions
import trio

from prism.grpc import transport
from prism.grpc.service import MessageType, decode, encode
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
from prism.grpc.wire.metadata import Metadata, MetadataError, MetadataLike
from prism.grpc.wire.status import (
    Cancelled,
    GrpcError,
    Internal,
    ResourceExhausted,
    Status,
    Unavailable,
)

log = logging.getLogger("prism.grpc.channel")

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
    closes the connection.
    """
    async with trio.open_nursery() as nursery:
        channel = Channel(target, nursery, ssl_context, server_hostname, options)
        try:
            yield channel
        finally:
            channel.close()
            nursery.cancel_scope.cancel()


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

    def stream(
        self,
        method: str,
        response_type: MessageType,
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> ClientCall:
        """A call of any shape; use as ``async with channel.stream(...) as call:``."""
        return ClientCall(self, method, response_type, metadata, compression=compression)

    async def unary_unary(
        self,
        method: str,
        request: Any,
        response_type: MessageType,
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> Any:
        async with ClientCall(
            self, method, response_type, metadata, first=request, compression=compression
        ) as call:
            return await call.receive_single()

    async def unary_stream(
        self,
        method: str,
        request: Any,
        response_type: MessageType,
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> list[Any]:
        """All responses of a server-streaming call (use :meth:`stream` to iterate instead)."""
        async with ClientCall(
            self, method, response_type, metadata, first=request, compression=compression
        ) as call:
            return [message async for message in call]

    async def stream_unary(
        self,
        method: str,
        requests: Iterable[Any],
        response_type: MessageType,
        *,
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> Any:
        async with ClientCall(
            self, method, response_type, metadata, compression=compression
        ) as call:
            for request in requests:
                await call.send_message(request)
            await call.end()
            return await call.receive_single()


class ClientCall:
    """One RPC from the client side. Leaving the block early cancels it (RST_STREAM CANCEL)."""

    def __init__(
        self,
        channel: Channel,
        method: str,
        response_type: MessageType,
        metadata: MetadataLike,
        first: Any = None,
        compression: str | None = None,
    ) -> None:
        check_encoding(compression)
        self._channel = channel
        self._compression = compression or channel.options.compression
        #: The encoding the server compressed its responses with ("identity": none).
        self.response_encoding = "identity"
        self.method = method
        self._response_type = response_type
        self._metadata = metadata
        self._first = first
        self._conn: _ClientConnection | None = None
        self.stream_id = 0
        self.initial_metadata: Metadata = []
        self.trailing_metadata: Metadata = []
        self.status: Status | None = None
        self.status_message = ""
        self._error: GrpcError | None = None
        self._inbox: collections.deque[bytes] = collections.deque()
        self._arrived: trio.Event | None = None  # while receive_message waits
        self._ended = False
        self._waited = False  # receive_message blocked (a checkpoint happened)

    async def __aenter__(self) -> ClientCall:
        conn = await self._channel.connection()
        deadline = trio.current_effective_deadline()
        timeout = None if deadline == math.inf else max(deadline - trio.current_time(), 0.0)
        while not conn.conn.can_open_stream():
            if not conn.usable:
                conn = await self._channel.connection()
                continue
            await conn.stream_closed_event().wait()
        first = None if self._first is None else self._encode(self._first)
        try:
            self.stream_id = conn.conn.start_request(
                self.method, self._metadata, timeout, end=False, compression=self._compression
            )
        except MetadataError as exc:
            raise Internal(str(exc)) from None
        except h2.exceptions.ProtocolError as exc:
            raise Unavailable(f"connection unusable: {exc}") from None
        self._conn = conn
        conn.calls[self.stream_id] = self
        if first is not None:
            conn.conn.send_message(self.stream_id, first, end=True)
        conn.kick()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        if conn is None:
            return
        conn.calls.pop(self.stream_id, None)
        if not self._ended:
            conn.conn.cancel(self.stream_id)
        else:
            conn.conn.finish(self.stream_id)
        if not conn.calls and conn.conn.goaway_received is not None:
            conn.close()  # the last call on a connection the server is draining: hang up
        conn.kick()
        conn.notify_stream_closed()

    def _encode(self, message: Any) -> bytes:
        data = encode(message)
        limit = self._channel.options.max_send_message_size
        if limit is not None and len(data) > limit:
            raise ResourceExhausted(f"request message larger than max ({len(data)} vs. {limit})")
        return data

    # -- fed by the connection ---------------------------------------------------------------

    def on_headers(self, metadata: Metadata, encoding: str) -> None:
        self.initial_metadata = metadata
        self.response_encoding = encoding

    def feed(self, message: bytes) -> None:
        self._inbox.append(message)
        if self._arrived is not None:
            self._arrived.set()

    def on_end(self, status: Status, message: str, trailers: Metadata) -> None:
        self._ended = True
        self.status, self.status_message, self.trailing_metadata = status, message, trailers
        if status != Status.OK:
            self._error = GrpcError.for_status(status, message, trailers)
        if self._arrived is not None:
            self._arrived.set()

    def on_abort(self, error: GrpcError) -> None:
        self._ended = True
        self.status, self.status_message = error.status, error.message
        self._error = error
        if self._arrived is not None:
            self._arrived.set()

    # -- the caller's API --------------------------------------------------------------------

    async def send_message(self, message: Any, *, compress: bool = True) -> None:
        """Send one request; waits while the server's flow-control window is full.

        On a compressed call, ``compress=False`` sends this message uncompressed (for a
        message that mixes secrets with attacker-controlled data: CRIME/BREACH)."""
        await trio.lowlevel.checkpoint()
        conn = self._require()
        if self._ended:
            self._raise_status()
            raise Internal("the call has already ended")
        try:
            conn.conn.send_message(self.stream_id, self._encode(message), compress=compress)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._raise_status()
            raise Cancelled("the stream was closed") from None
        conn.kick()
        await conn.wait_writable(self.stream_id, self)

    async def end(self) -> None:
        """Half-close: no more requests."""
        await trio.lowlevel.checkpoint()
        conn = self._require()
        if self._ended:
            return
        try:
            conn.conn.end_request(self.stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        conn.kick()

    async def receive_message(self) -> Any:
        """The next response, or None after the server ended the call with OK.

        A non-OK status raises the matching :class:`GrpcError`.
        """
        return await self._receive(True)

    async def _receive(self, checkpoint: bool) -> Any:
        conn = self._require()
        while not self._inbox:
            if self._ended:
                if checkpoint:
                    await trio.lowlevel.checkpoint()
                self._raise_status()
                return None
            self._arrived = trio.Event()
            await self._arrived.wait()
            self._arrived = None
            self._waited = True
        data = self._inbox.popleft()
        conn.conn.consumed(self.stream_id, len(data) + 5)
        conn.kick()
        return decode(self._response_type, data)

    async def receive_single(self) -> Any:
        self._waited = False
        response = await self.receive_message()
        if response is None:
            raise Internal(f"{self.method}: the server sent no response message")
        # The usual case: the first receive waited for the response and the trailers came with
        # it. That wait was this call's checkpoint; another would be a whole scheduler pass.
        while await self._receive(not self._waited) is not None:
            raise Internal(f"{self.method}: the server sent more than one response message")
        return response

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.receive_message()) is not None:
            yield message

    def _raise_status(self) -> None:
        if self._error is not None:
            raise self._error

    def _require(self) -> _ClientConnection:
        if self._conn is None:
            raise RuntimeError("use the call as `async with channel.stream(...) as call:`")
        return self._conn


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
            scheme="https" if isinstance(stream, trio.SSLStream) else "http",
            user_agent=opts.user_agent,
            max_receive_message_size=opts.max_receive_message_size,
        )
        self.calls: dict[int, ClientCall] = {}
        self._output = transport.Output(stream, self.conn, self.calls)
        self.kick = self._output.kick
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

    async def wait_writable(self, stream_id: int, call: ClientCall) -> None:
        """Block while more than a window's worth is queued on the stream (back-pressure),
        until the call or the connection ends."""
        limit = self.conn.settings.initial_window_size
        while self.conn.pending(stream_id) > limit and not self._dead and not call._ended:
            await self._window.wait()

    def _wake_writers(self) -> None:
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
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.on_end(event.status, event.message, event.trailers)
                        self._wake_writers()  # a sender parked on this call must return
                elif type(event) is ResponseHeadersReceived:
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.on_headers(event.metadata, event.encoding)
                elif type(event) is StreamAborted:
                    call = self.calls.get(event.stream_id)
                    if call is not None:
                        call.on_abort(event.error)
                        self._wake_writers()
                elif type(event) is WindowUpdated:
                    self._wake_writers()
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
