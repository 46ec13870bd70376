"""The server side of one RPC, as a handler sees it."""

from __future__ import annotations

import collections
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import h2.exceptions
import trio

from prism.grpc import traceid
from prism.grpc.interceptor import CallState
from prism.grpc.service import Cardinality, RpcMethod, decode, encode
from prism.grpc.transport import YIELD_BYTES, YIELD_MESSAGES, PeerInfo
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.metadata import Metadata, MetadataError, MetadataLike
from prism.grpc.wire.metadata import validate as validate_metadata
from prism.grpc.wire.status import (
    Cancelled,
    GrpcError,
    Internal,
    ResourceExhausted,
    Status,
    Unknown,
)

if TYPE_CHECKING:
    from prism.grpc.connection import Connection

log = logging.getLogger("prism.grpc.server")

# receive_message reports the bytes the handler took to flow control once the inbox is empty,
# or after this many: one report per read of the socket rather than one per message.
_REPORT_BYTES = 1 << 16


def error_from_exception(exc: BaseException, method: str, trace_id: str) -> GrpcError:
    """The status a handler's exception ends its RPC with.

    A :class:`GrpcError` keeps its status, also inside an exception group (the first one
    found). Anything else is a bug or an unexpected failure: logged under the call's
    ``trace_id`` (in the message and as the record's ``trace_id`` field) next to its
    traceback, and the RPC ends with UNKNOWN naming the trace id, so the message never leaks
    internals (or secrets) to the client, and the id the client reports is the one to grep
    for. A group holding both a GrpcError and a bug ends with the GrpcError's status, and the
    bug is logged all the same: a sibling task's deliberate error must not hide it.
    """
    if isinstance(exc, GrpcError):
        return exc
    found: GrpcError | None = None
    bugs: BaseException | None = exc
    if isinstance(exc, BaseExceptionGroup):
        errors, bugs = exc.split(lambda e: isinstance(e, GrpcError))
        leaf: BaseException | None = errors
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, GrpcError):
            found = leaf
        if bugs is None:
            assert found is not None
            return found
    extra = {"trace_id": trace_id}
    if found is None:
        log.error("%s failed (trace id %s)", method, trace_id, exc_info=bugs, extra=extra)
        return Unknown(f"internal error in {method} (trace id {trace_id})")
    log.error(
        "%s failed (trace id %s) with %s, and besides: %r",
        method,
        trace_id,
        found.status.name,
        bugs,
        exc_info=bugs,
        extra=extra,
    )
    return found


def final_status(
    method: str, status: Status, message: str, trailers: Metadata
) -> tuple[Status, str, Metadata]:
    """The status, message and trailing metadata to end an RPC with: INTERNAL when the
    trailers cannot be sent (e.g. a GrpcError carrying reserved keys), logged."""
    if trailers:
        try:
            validate_metadata(trailers)
        except MetadataError as exc:
            log.error("%s: cannot send trailers: %s", method, exc)
            return Status.INTERNAL, "invalid trailing metadata", []
    return status, message, trailers


class ServerCall:
    """One RPC in progress. Handlers receive it as ``call``."""

    def __init__(
        self,
        connection: Connection,
        stream_id: int,
        method: str,
        metadata: Metadata,
        peer: PeerInfo,
        deadline: float,
        rpc: RpcMethod,
    ) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.method = method
        self.metadata = metadata
        self.peer = peer
        self.deadline = deadline
        self.rpc = rpc
        self.trailing_metadata: Metadata = []
        self.aborted: GrpcError | None = None
        self.scope: trio.CancelScope | None = None
        self._inbox: collections.deque[bytes] = collections.deque()
        self._input_ended = False
        self._waiter: trio.lowlevel.Task | None = None  # while receive_message waits
        # Bytes of messages taken off the inbox and not yet reported to flow control, and
        # messages taken since receive_message last waited or yielded.
        self._taken = 0
        self._streak = 0
        self._headers_sent = False
        self._unyielded = self._unyielded_messages = 0  # sent since send_message last yielded
        self.cancelled = False  # by the server (shutdown), not by the client
        self._state: CallState | None = None
        #: The client sends a stream of requests (client streaming or bidirectional).
        self.client_streaming = rpc.cardinality.client_streaming
        # Client streaming with one response at the end: nobody waits on each request, so the
        # reader may gather them (Connection._reader). Not bidirectional: a ping-pong would
        # wait on every gathering.
        self.gathers = rpc.cardinality is Cardinality.STREAM_UNARY
        self.received = 0  # request messages fed so far

    @property
    def state(self) -> CallState:
        """Values interceptors attached for the handler, by typed key (prism.grpc.interceptor):
        ``call.state[IDENTITY]``. Made on first use."""
        state = self._state
        if state is None:
            state = self._state = CallState()
        return state

    @property
    def input_ended(self) -> bool:
        """The client half-closed, or the stream is gone: no more requests will arrive."""
        return self._input_ended

    @functools.cached_property
    def trace_id(self) -> str:
        """The call's W3C trace id, the one its internal errors are reported under: its
        ``traceparent``'s when that is valid, else a new one, made on first use (a call that
        never fails never makes one). A stage that starts the call's trace (the proxy's
        tracing) assigns it, so every record of the call names the same id: a plain
        attribute store (a cached property has no setter to call)."""
        return traceid.from_traceparent(self.metadata)

    # -- fed by the connection's reader -----------------------------------------------------

    def feed(self, messages: list[bytes]) -> bool:
        """Queue ``messages`` for the handler; True when that woke it (it was waiting)."""
        self._inbox.extend(messages)
        self.received += len(messages)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)
            return True
        return False

    def end_input(self) -> None:
        self._input_ended = True
        self._wake()

    def abort(self, error: GrpcError) -> None:
        """The stream is gone (client reset, or a broken request): stop the handler."""
        self.aborted = error
        self._input_ended = True
        self._inbox.clear()  # nobody will answer them: the handler sees Cancelled next
        self._wake()
        if self.scope is not None:
            self.scope.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def cancel(self) -> None:
        """Stop the handler; the RPC still ends with a status (server shutdown)."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    # -- the handler's API ------------------------------------------------------------------

    @property
    def time_remaining(self) -> float:
        return self.deadline - trio.current_time() if self.deadline != math.inf else math.inf

    def metadata_value(self, key: str) -> str | bytes | None:
        """The first value of ``key`` in the invocation metadata, or None."""
        for k, v in self.metadata:
            if k == key:
                return v
        return None

    async def receive_message(self) -> Any:
        """The next request message, or None once the client has half-closed.

        A checkpoint when it waits for a message, and every ``transport.YIELD_MESSAGES``
        messages when they are already here (messages that arrived together are taken
        without a pass through the scheduler each). Cancellation (deadline, client reset)
        raises ``trio.Cancelled`` as usual.
        """
        inbox = self._inbox
        if not inbox or self._streak >= YIELD_MESSAGES:
            await self._refill()
            if not inbox:
                return None
        self._streak += 1
        data = inbox.popleft()
        taken = self._taken = self._taken + len(data) + 5
        if taken >= _REPORT_BYTES or not inbox:
            self._report()
        return decode(self.rpc.request_type, data)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        # receive_message inline: an awaited coroutine per message costs as much as the rest.
        inbox = self._inbox
        request_type = self.rpc.request_type
        while True:
            if not inbox or self._streak >= YIELD_MESSAGES:
                await self._refill()
                if not inbox:
                    return
            self._streak += 1
            data = inbox.popleft()
            taken = self._taken = self._taken + len(data) + 5
            if taken >= _REPORT_BYTES or not inbox:
                self._report()
            yield data if request_type is bytes else decode(request_type, data)

    async def _refill(self) -> None:
        """Wait until a message is in the inbox or input has ended; always a checkpoint."""
        self._streak = 0
        inbox = self._inbox
        if inbox:  # YIELD_MESSAGES in a row without waiting: let other tasks run
            await trio.lowlevel.checkpoint()
            return
        while not inbox:
            if self._input_ended:
                await trio.lowlevel.checkpoint()
                return
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def _abort_wait(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _report(self) -> None:
        """Tell flow control what the handler took: the client's window reopens as the
        handler keeps up (a handler that stops reading stops the client)."""
        connection = self._connection
        connection.conn.consumed(self.stream_id, self._taken)
        self._taken = 0
        connection.kick()

    async def send_initial_metadata(self, metadata: MetadataLike = ()) -> None:
        await trio.lowlevel.checkpoint()
        if self._headers_sent:
            raise Internal("initial metadata was already sent")
        try:
            validate_metadata(metadata)
        except MetadataError as exc:
            raise Internal(str(exc)) from None
        self._send(lambda: self._connection.conn.send_headers(self.stream_id, metadata))
        self._headers_sent = True
        self._connection.kick()

    def set_trailing_metadata(self, metadata: MetadataLike) -> None:
        try:
            validate_metadata(metadata)
        except MetadataError as exc:
            raise Internal(str(exc)) from None
        self.trailing_metadata = list(metadata)

    async def send_message(self, message: Any, *, compress: bool = True) -> None:
        """Send one response message; waits while the client's flow-control window is full.

        When the server compresses responses (``ServerOptions.compression``),
        ``compress=False`` sends this message uncompressed (CRIME/BREACH).

        Always a cancel point; a schedule point every few messages (``transport.YIELD_BYTES``,
        ``YIELD_MESSAGES``) and whenever flow control makes it wait. Messages sent in
        between go out together, in one write by the connection's writer task: a write and
        a pass through the scheduler per message cost more than the message itself.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        connection = self._connection
        data = self._encoded(message)
        self._send(
            lambda: connection.conn.send_message(
                self.stream_id, data, compress=compress, batch=True
            )
        )
        self._headers_sent = True
        connection.schedule_write()
        if connection.conn.pending(self.stream_id) > connection.conn.settings.initial_window_size:
            self._unyielded = self._unyielded_messages = 0
            await connection.wait_writable(self.stream_id)
            return
        self._unyielded += len(data)
        self._unyielded_messages += 1
        if self._unyielded >= YIELD_BYTES or self._unyielded_messages >= YIELD_MESSAGES:
            self._unyielded = self._unyielded_messages = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _encoded(self, message: Any) -> bytes | Pieces:
        data = encode(message)
        limit = self._connection.server.options.max_send_message_size
        if limit is not None and len(data) > limit:
            raise ResourceExhausted(f"response message larger than max ({len(data)} vs. {limit})")
        return data

    async def _respond(self, message: Any) -> None:
        # The only response of a unary call; it goes out with the trailers that _run_call
        # adds right after (one write, one wakeup of the client, not two).
        data = encode(message)
        limit = self._connection.server.options.max_send_message_size
        if limit is not None and len(data) > limit:
            raise ResourceExhausted(f"response message larger than max ({len(data)} vs. {limit})")
        self._send(lambda: self._connection.conn.send_message(self.stream_id, data))
        self._headers_sent = True
        await self._connection.wait_writable(self.stream_id)

    def discard_unsent(self) -> int:
        """Drop the response messages flow control still holds back because the client has
        not made room for them (all but the rest of one already partly sent); returns how many
        bytes were dropped. For a handler about to end the call with an error the client should
        see at once rather than after reading everything queued, such as a subscriber cut off
        for falling behind: the trailers then follow right behind what was kept."""
        return self._connection.conn.discard_unsent(self.stream_id)

    def end_at_once(self, error: GrpcError) -> bool:
        """End the RPC with ``error`` now, dropping every response message flow control still
        holds back because the client has not made room for it. For an error the client must
        see at once, not after the backlog it is about: a subscriber cut off for falling
        behind.

        When no message is half-sent, the trailers (``error``'s status, message and trailers,
        and any :meth:`set_trailing_metadata`) go out right behind what went out. When part of
        one already did (the rest is waiting for the client's window), the stream is reset
        with RST_STREAM(ENHANCE_YOUR_CALM) instead, which gRPC clients report as
        RESOURCE_EXHAUSTED without the message: the peer must never see half a message
        followed by trailers. Either way the stream is over: the handler should raise
        ``error`` (or return) next; nothing more is sent, and requests are no longer read.
        Interceptors see ``error``'s status as the outcome. Returns True when the stream
        was reset."""
        if self.aborted is not None:
            return False
        status, message, trailers = final_status(
            self.method, error.status, error.message, [*self.trailing_metadata, *error.trailers]
        )
        connection = self._connection
        try:
            reset = connection.conn.end_at_once(self.stream_id, status, message, trailers)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            reset = False  # the client reset it meanwhile: over all the same
        self.aborted = error  # the stream is done: the server sends no trailers of its own
        self._input_ended = True
        self._inbox.clear()
        self._wake()
        connection.kick()
        return reset

    def _send(self, action: Callable[[], None]) -> None:
        try:
            action()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            raise Cancelled("the client closed the stream") from None

    # -- run by the server ------------------------------------------------------------------

    async def invoke(self, func: Callable[..., Any]) -> None:
        shape = self.rpc.cardinality
        if shape is Cardinality.UNARY_UNARY:
            response = await func(await self._single_request(), self)
            # No schedule point of our own between the handler and its only response (the
            # handler had its own): a full checkpoint here cost a trip through the scheduler
            # per RPC. Cancellation (deadline, reset) is still honoured.
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._respond(response)
        elif shape is Cardinality.UNARY_STREAM:
            await func(await self._single_request(), self)
        elif shape is Cardinality.STREAM_UNARY:
            response = await func(self)
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._respond(response)
        else:
            await func(self)

    async def _single_request(self) -> Any:
        request = await self.receive_message()
        if request is None:
            raise GrpcError("expected one request message, got none", status=Status.INTERNAL)
        return request
