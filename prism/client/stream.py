"""Stream operations (``ExecuteStream``): one call, a first request naming the operation, then
results as they come (a subscription, a long poll, chunks of an object)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

import trio

from prism import grpc as pg
from prism.client._envelope import Params, encode_request

__all__ = ["OperationStream"]

T = TypeVar("T")

#: Reads one ``StreamResponse``'s bytes: ``(result or None, is_final)``.
Decode = Callable[[bytes], tuple[T | None, bool]]


class OperationStream(Generic[T]):
    """The results of one stream operation, as an async iterator::

        async for result in client.stream("ns", "watch", params, Result):
            ...

    The call starts when the loop (or ``async with``) starts and ends when the plugin ends the
    stream (the loop stops), when it fails (the loop raises the call's ``GrpcError``), or when
    the caller leaves it: ``break``, an exception or a cancellation out of the loop, or leaving
    ``async with stream:`` — which cancels the call on the wire (RST_STREAM) so the plugin's
    side ends too. ``async with`` makes that moment explicit (without it, a loop left by
    ``break`` cancels the call when the stream object is dropped).

    Deadlines: an enclosing cancel scope bounds the stream as it bounds any Trio operation; a
    ``timeout=`` given when the stream was made is the whole call's deadline (``DeadlineExceeded``).
    """

    def __init__(self, call: pg.ClientCall[bytes], first: bytes, decode: Decode[T]) -> None:
        self._call = call
        self._first = first
        self._decode = decode
        self._opened = False
        self._closed = False
        self._waiting: trio.CancelScope | None = None  # a receive in progress

    async def __aenter__(self) -> OperationStream[T]:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            await self._call.__aenter__()
            await self._call.send_message(self._first)
        except BaseException:
            self.close()
            raise

    async def send(self, params: Params) -> None:
        """Send a further request on the stream (for operations that take them; others fail
        the stream with INVALID_ARGUMENT). Waits while flow control holds it back."""
        await self._open()
        await self._call.send_message(encode_request("", "", params))

    async def end(self) -> None:
        """Half-close: no more requests. Whether that ends the stream is the operation's
        business (a subscription goes on until it is left)."""
        await self._open()
        await self._call.end()

    async def receive(self) -> T | None:
        """The next result, or None once the stream has ended (or was closed, also by another
        task). A non-OK end raises its ``GrpcError``. Cancellation abandons the wait and
        leaves the call open: leave it with :meth:`close` (or ``async with``) to end it."""
        await self._open()
        while True:
            response: bytes | None = None
            # The call does not wake a receiver when it is closed: close() cancels this.
            with trio.CancelScope() as self._waiting:
                response = await self._call.receive_message()
            self._waiting = None
            if response is None:
                self.close()
                return None
            result, _final = self._decode(response)
            # A final marker without a result is followed by the call's end (its status).
            if result is not None:
                return result

    def __aiter__(self) -> OperationStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            result = await self.receive()
        except BaseException:
            self.close()
            raise
        if result is None:
            raise StopAsyncIteration
        return result

    def close(self) -> None:
        """Leave the stream: cancel the call (RST_STREAM) unless it has ended. Synchronous,
        idempotent. A receive waiting in another task returns None (its loop ends)."""
        if self._closed:
            return
        self._closed = True
        self._call.close()
        if self._waiting is not None:
            self._waiting.cancel()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.close()

    @property
    def status(self) -> pg.Status | None:
        """The call's final status (None while it runs)."""
        return self._call.status

    def __del__(self) -> None:
        # Dropped while open (a loop left by `break`): end the call. Synchronous and sans-IO.
        if self._opened and not self._closed:
            try:  # noqa: SIM105 (a finalizer must never raise)
                self.close()
            except Exception:
                pass
