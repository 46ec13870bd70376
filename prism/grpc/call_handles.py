"""What :class:`~prism.grpc.channel.Channel`'s unary and streaming call methods return, over
a :class:`~prism.grpc.client_call.ClientCall`:

* :class:`UnaryCall` (``unary_unary``, ``stream_unary``): ``await`` it for the response; its
  metadata and status are there once it has completed.
* :class:`StreamCall` (``unary_stream``, ``stream_stream``): ``async for`` over it for each
  response as it arrives; ``async with`` it to bound its lifetime explicitly.

Deadlines are the :class:`~prism.grpc.client_call.ClientCall`'s (see there).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

import trio

from prism.grpc.client_call import ClientCall, Requests
from prism.grpc.wire.metadata import Metadata
from prism.grpc.wire.status import GrpcError, Status

T = TypeVar("T")


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
