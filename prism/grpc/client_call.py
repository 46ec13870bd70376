"""Client calls: what :class:`~prism.grpc.channel.Channel`'s call methods return.

* :class:`UnaryCall` (``unary_unary``, ``stream_unary``): ``await`` it for the response; its
  metadata and status are there once it has completed.
* :class:`StreamCall` (``unary_stream``, ``stream_stream``): ``async for`` over it for each
  response as it arrives; ``async with`` it to bound its lifetime explicitly.
* :class:`ClientCall` (``Channel.stream``): the call as a duplex stream, for code that
  interleaves sends and receives itself; ``async with`` only.

Deadlines: ``timeout=`` (seconds) on a call is its deadline; when it passes, the call is
cancelled on the wire (RST_STREAM) and raises :class:`~prism.grpc.DeadlineExceeded`, the same
exception a server's DEADLINE_EXCEEDED raises. An enclosing Trio cancel scope bounds a call too
(its deadline is sent as ``grpc-timeout`` as well) and cancels it the way Trio always does.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import h2.exceptions
import trio

from prism.grpc.service import MessageType, decode, encode
from prism.grpc.transport import YIELD_BYTES, YIELD_MESSAGES
from prism.grpc.wire.compression import check_encoding
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
        deadline = trio.current_effective_deadline()
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
        """Leave the call: RST_STREAM(CANCEL) if it has not ended. Synchronous; idempotent."""
        conn = self._conn
        if conn is None or self._closed:
            return
        self._closed = True
        conn.calls.pop(self.stream_id, None)
        conn.opening.discard(self.stream_id)
        if not self._ended:
            conn.conn.cancel(self.stream_id)
            self._ended = True
            if self.status is None:
                self.status, self.status_message = Status.CANCELLED, "cancelled by the caller"
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

    def on_abort(self, error: BaseException, status: Status | None = None) -> None:
        self._ended = True
        if isinstance(error, GrpcError):
            self.status, self.status_message = error.status, error.message
        else:
            self.status, self.status_message = status or Status.CANCELLED, str(error)
        self._error = error
        if self._arrived is not None:
            self._arrived.set()

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
        result: T = decode(self._response_type, data)
        return result

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


class _Outcome(Generic[T]):
    """What :class:`UnaryCall` and :class:`StreamCall` tell about their call."""

    _call: ClientCall[T]

    @property
    def method(self) -> str:
        return self._call.method

    @property
    def initial_metadata(self) -> Metadata:
        """The server's response headers (custom metadata); empty until they arrive."""
        return self._call.initial_metadata

    @property
    def trailing_metadata(self) -> Metadata:
        """The server's trailers (custom metadata); empty until the call ends."""
        return self._call.trailing_metadata

    @property
    def status(self) -> Status | None:
        """The final status; None while the call runs."""
        return self._call.status

    @property
    def status_message(self) -> str:
        return self._call.status_message

    @property
    def response_encoding(self) -> str:
        """The ``grpc-encoding`` of the responses ("identity": not compressed)."""
        return self._call.response_encoding


class UnaryCall(_Outcome[T], Coroutine[Any, Any, T]):
    """A call with one response (unary-unary, stream-unary). ``await`` it for the response,
    then read ``initial_metadata``, ``trailing_metadata``, ``status`` on it::

        call = channel.unary_unary("/pkg.Svc/Get", request, Reply)
        reply = await call
        print(call.trailing_metadata)

    A non-OK status raises its :class:`~prism.grpc.GrpcError` (and is on ``status`` too).
    The call runs when awaited, once: awaiting it again gives the same outcome. Cancelling the
    awaiting task cancels the call on the wire. It is a coroutine, so
    ``nursery.start_soon(channel.unary_unary, ...)`` works as for any async function.
    """

    def __init__(self, call: ClientCall[T], requests: Requests | None) -> None:
        self._call = call
        self._requests = requests
        self._coro: Coroutine[Any, Any, T] | None = None
        self._done = False
        self._result: T | None = None

    def _coroutine(self) -> Coroutine[Any, Any, T]:
        if self._coro is None:
            self._coro = self._run() if not self._done else self._again()
        return self._coro

    def __await__(self) -> Generator[Any, None, T]:
        if self._done:
            self._coro = None  # a finished coroutine cannot be awaited twice: make another
        return self._coroutine().__await__()

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *args: Any) -> Any:
        return self._coroutine().throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def _run(self) -> T:
        self._done = True
        call = self._call
        async with call:
            if self._requests is not None:
                await _send_all(call, self._requests)
            self._result = response = await call.receive_single()
        return response

    async def _again(self) -> T:
        await trio.lowlevel.checkpoint()
        self._call._raise_status()
        if self._result is None:
            raise RuntimeError("the call has not completed")
        return self._result


async def _send_all(call: ClientCall[Any], requests: Requests) -> None:
    """Send every request, then half-close; stops early once the server ended the call."""
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            if call._ended:
                return
            await call.send_message(request)
    else:
        for request in requests:
            if call._ended:
                return
            await call.send_message(request)
    await call.end()


class StreamCall(_Outcome[T]):
    """A call with a stream of responses (unary-stream, stream-stream): an async iterator
    that yields each response as it arrives. Memory holds the responses the consumer has not
    taken yet, bounded by HTTP/2 flow control, never the whole stream::

        async for reply in channel.unary_stream("/pkg.Svc/List", request, Reply):
            ...

    ``async with`` bounds the call's lifetime: leaving the block before the stream ended
    cancels it (RST_STREAM). Iterated without ``async with``, the call is cancelled when the
    loop stops early (``break``, an exception) and the iterator is dropped, or when
    :meth:`cancel` is called. A non-OK status raises its :class:`~prism.grpc.GrpcError` from
    the loop. For stream-stream calls, the requests are sent by a task of the channel while
    the responses are read; an exception raised by the requests iterable cancels the call and
    is raised from the loop.
    """

    def __init__(self, call: ClientCall[T], requests: Requests | None) -> None:
        self._call = call
        self._requests = requests
        self._opened = False
        self._sender: trio.CancelScope | None = None

    async def __aenter__(self) -> StreamCall[T]:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    async def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        await self._call.__aenter__()
        if self._requests is not None:
            self._sender = trio.CancelScope()
            self._call._channel._nursery.start_soon(_pump, self._call, self._requests, self._sender)

    def __aiter__(self) -> StreamCall[T]:
        return self

    async def __anext__(self) -> T:
        try:
            if not self._opened:
                await self._open()
            message = await self._call.receive_message()
        except BaseException:
            self.cancel()
            raise
        if message is None:
            self.cancel()
            raise StopAsyncIteration
        return message

    async def receive_message(self) -> T | None:
        """The next response, or None once the call ended with OK."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None

    def cancel(self) -> None:
        """End the call now: RST_STREAM(CANCEL) if it has not ended. Idempotent."""
        if self._sender is not None:
            self._sender.cancel()
        self._call.close()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.cancel()

    def __del__(self) -> None:
        # Dropped while the stream is open (a loop left by `break`): cancel it. Everything
        # here is synchronous and sans-IO, or a write the connection does anyway.
        if self._opened and not self._call._closed:
            try:  # noqa: SIM105 (a finalizer must never raise)
                self.cancel()
            except Exception:
                pass


async def _pump(call: ClientCall[Any], requests: Requests, scope: trio.CancelScope) -> None:
    # Runs in the channel's nursery: nothing it raises may reach it.
    with scope:
        try:
            await _send_all(call, requests)
        except GrpcError:
            return  # the call ended; its status reaches the consumer from the response side
        except Exception as exc:
            if not call._closed:
                call.close()  # RST_STREAM(CANCEL)
                call.on_abort(exc, Status.CANCELLED)  # the consumer's loop raises exc
