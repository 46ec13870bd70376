"""The client side of one RPC: :class:`ClientCall` (``Channel.stream``), the call as a duplex
stream, for code that interleaves sends and receives itself; ``async with`` only. The
awaitable and iterable call objects the other call methods return
(:mod:`prism.grpc.call_handles`) are built on it.

Deadlines: ``timeout=`` (seconds) on a call is its deadline; when it passes, the call is
cancelled on the wire (RST_STREAM) and raises :class:`~prism.grpc.DeadlineExceeded`, the same
exception a server's DEADLINE_EXCEEDED raises. An enclosing Trio cancel scope bounds a call too
(its deadline is sent as ``grpc-timeout`` as well) and cancels it the way Trio always does.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import h2.exceptions
import trio

from prism.grpc.deadline import effective_deadline
from prism.grpc.service import MessageType, decode, encode
from prism.grpc.transport import YIELD_BYTES, YIELD_MESSAGES
from prism.grpc.wire.compression import check_encoding
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.metadata import Metadata, MetadataError, MetadataLike
from prism.grpc.wire.status import (
    Cancelled,
    DeadlineExceeded,
    GrpcError,
    Internal,
    ResourceExhausted,
    Status,
    Unavailable,
)

if TYPE_CHECKING:
    from prism.grpc.channel import Channel, _ClientConnection

T = TypeVar("T")
#: Request messages for a client-streaming call: a sync or an async iterable.
Requests = Iterable[Any] | AsyncIterable[Any]


class ClientCall(Generic[T]):
    """One RPC from the client side. Leaving the block early cancels it (RST_STREAM CANCEL).

    ``initial_metadata`` is filled when the response headers arrive (before the first
    message); ``trailing_metadata``, ``status`` and ``status_message`` when the call ends.
    """

    def __init__(
        self,
        channel: Channel,
        method: str,
        response_type: type[T],
        metadata: MetadataLike,
        first: Any = None,
        compression: str | None = None,
        timeout: float | None = None,
    ) -> None:
        check_encoding(compression)
        self._channel = channel
        self.method = method
        self._response_type: MessageType = response_type  # type: ignore[assignment]
        self._metadata = metadata
        self._first = first
        self._compression = compression or channel.options.compression
        self._timeout = timeout
        self._deadline: float | None = None  # ours (timeout=), set when the call starts
        self._conn: _ClientConnection | None = None
        self.stream_id = 0
        self.initial_metadata: Metadata = []
        self.trailing_metadata: Metadata = []
        self.status: Status | None = None
        self.status_message = ""
        #: The encoding the server compressed its responses with ("identity": none).
        self.response_encoding = "identity"
        self._error: BaseException | None = None
        self._inbox: collections.deque[bytes] = collections.deque()
        self._arrived: trio.Event | None = None  # while receive_message waits
        self._ended = False
        self._over: trio.Event | None = None  # made by wait_ended, set when the call ends
        self._closed = False  # left: stream finished or cancelled, unregistered
        self._waited = False  # receive_message blocked (a checkpoint happened)
        self._unyielded = self._unyielded_messages = 0  # sent since send_message last yielded

    async def __aenter__(self) -> ClientCall[T]:
        if self._timeout is None:
            await self._open()
            return self
        self._deadline = trio.current_time() + self._timeout
        with trio.CancelScope(deadline=self._deadline) as scope:
            await self._open()
            return self
        self._expire(scope)

    async def _open(self) -> None:
        channel = self._channel
        conn = await channel.connection()
        # The nearest of every enclosing deadline, ``timeout=``'s scope (entered above) among
        # them: a caller's tighter cancel scope is what the server must hear.
        deadline = effective_deadline()
        timeout = None if deadline == math.inf else max(deadline - trio.current_time(), 0.0)
        while not conn.conn.can_open_stream():
            if not conn.usable:
                conn = await channel.connection()
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
        conn.opening.add(self.stream_id)
        if first is not None:
            conn.conn.send_message(self.stream_id, first, end=True)
        conn.kick()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Leave the call: RST_STREAM(CANCEL) if it has not ended. Synchronous; idempotent.

        From another task too: a :meth:`receive_message` waiting there returns None (its
        ``async for`` ends; ``status`` says CANCELLED), a :meth:`send_message` waiting for
        flow control returns, and responses not yet taken are dropped.
        """
        conn = self._conn
        if conn is None or self._closed:
            return
        self._closed = True
        conn.calls.pop(self.stream_id, None)
        conn.opening.discard(self.stream_id)
        if not self._ended:
            conn.conn.cancel(self.stream_id)
            self._ended = True
            self._inbox.clear()
            if self.status is None:
                self.status, self.status_message = Status.CANCELLED, "cancelled by the caller"
            if self._arrived is not None:
                self._arrived.set()
            if self._over is not None:
                self._over.set()
            conn.wake_writers()
        else:
            conn.conn.finish(self.stream_id)
        if not conn.calls and conn.conn.goaway_received is not None:
            conn.close()  # the last call on a connection the server is draining: hang up
        conn.kick()
        conn.notify_stream_closed()

    def _expire(self, scope: trio.CancelScope) -> NoReturn:
        """Our own deadline (``timeout=``) passed: cancel the call, raise DeadlineExceeded.
        Anything else that cancelled ``scope`` is not ours to report: re-raise nothing."""
        if not scope.cancelled_caught:
            raise RuntimeError("unreachable: the call's scope ended without a result")
        error = DeadlineExceeded(f"{self.method}: deadline exceeded (timeout {self._timeout:g} s)")
        if self.status is None or self.status is Status.CANCELLED:
            self.status, self.status_message = error.status, error.message
        self._error = error
        self.close()
        raise error

    def _encode(self, message: Any) -> bytes | Pieces:
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
        if self._over is not None:
            self._over.set()

    def on_abort(self, error: BaseException, status: Status | None = None) -> None:
        self._ended = True
        if isinstance(error, GrpcError):
            self.status, self.status_message = error.status, error.message
        else:
            self.status, self.status_message = status or Status.CANCELLED, str(error)
        self._error = error
        if self._arrived is not None:
            self._arrived.set()
        if self._over is not None:
            self._over.set()

    async def wait_ended(self) -> None:
        """Wait until the call has ended (``status`` is set), whether or not its responses
        have all been read: for a task that must act on a status at once, such as a relay
        blocked passing responses on while the server cut the stream."""
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        if self._over is None:
            self._over = trio.Event()
        await self._over.wait()

    # -- the caller's API --------------------------------------------------------------------

    async def send_message(self, message: Any, *, compress: bool = True) -> None:
        """Send one request; waits while the server's flow-control window is full.

        On a compressed call, ``compress=False`` sends this message uncompressed (for a
        message that mixes secrets with attacker-controlled data: CRIME/BREACH).

        Always a cancel point; a schedule point every few messages and whenever flow control
        makes it wait: messages sent in between go out in one write (see ``ServerCall``).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self._require()
        if self._ended:
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._raise_status()
            raise Internal("the call has already ended")
        data = self._encode(message)
        try:
            conn.conn.send_message(self.stream_id, data, compress=compress)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._raise_status()
            raise Cancelled("the stream was closed") from None
        conn.schedule_write()
        if conn.conn.pending(self.stream_id) > conn.conn.settings.initial_window_size:
            self._unyielded = self._unyielded_messages = 0
            await self._wait_writable(conn)
            return
        self._unyielded += len(data)
        self._unyielded_messages += 1
        if self._unyielded >= YIELD_BYTES or self._unyielded_messages >= YIELD_MESSAGES:
            self._unyielded = self._unyielded_messages = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait_writable(self, conn: _ClientConnection) -> None:
        if self._deadline is None:
            await conn.wait_writable(self.stream_id, self)
            return
        with trio.CancelScope(deadline=self._deadline) as scope:
            await conn.wait_writable(self.stream_id, self)
            return
        self._expire(scope)

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

    async def receive_message(self) -> T | None:
        """The next response, or None after the server ended the call with OK.

        A non-OK status raises the matching :class:`GrpcError`.
        """
        if self._deadline is None:
            return await self._receive(True)
        with trio.CancelScope(deadline=self._deadline) as scope:
            return await self._receive(True)
        self._expire(scope)

    async def _receive(self, checkpoint: bool) -> T | None:
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
        try:
            result: T = decode(self._response_type, data)
        except Exception as exc:
            # The server's fault, not the caller's (decode's InvalidArgument is for requests):
            # INTERNAL, as grpcio has it, and the call ends here.
            detail = exc.message if isinstance(exc, GrpcError) else type(exc).__name__
            self._fail(Internal(f"{self.method}: could not decode the response: {detail}"))
        return result

    def _fail(self, error: GrpcError) -> NoReturn:
        """End the call with ``error`` from our side (RST_STREAM CANCEL) and raise it."""
        self.close()
        self.status, self.status_message, self._error = error.status, error.message, error
        raise error

    async def receive_single(self) -> T:
        """The one response of a call that has one; more or none is INTERNAL."""
        if self._deadline is None:
            return await self._receive_single()
        with trio.CancelScope(deadline=self._deadline) as scope:
            return await self._receive_single()
        self._expire(scope)

    async def _receive_single(self) -> T:
        self._waited = False
        response = await self._receive(True)
        if response is None:
            raise Internal(f"{self.method}: the server sent no response message")
        # The usual case: the first receive waited for the response and the trailers came with
        # it. That wait was this call's checkpoint; another would be a whole scheduler pass.
        while await self._receive(not self._waited) is not None:
            raise Internal(f"{self.method}: the server sent more than one response message")
        return response

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while (message := await self.receive_message()) is not None:
            yield message

    def _raise_status(self) -> None:
        if self._error is not None:
            raise self._error

    def _require(self) -> _ClientConnection:
        if self._conn is None:
            raise RuntimeError("use the call as `async with channel.stream(...) as call:`")
        return self._conn
