"""The server side of one connection, on Trio: accepted by :class:`prism.grpc.server.Server`.

A :class:`Connection` drives the sans-IO :class:`~prism.grpc.wire.server_conn.ServerConnection`:
its reader feeds received bytes through it and hands the events to the calls, its writer
sends what it produces; watchdog tasks enforce the handshake timeout, idle and age limits and
keepalive; each RPC runs in its own task (:meth:`Connection._run_call`, the boundary that
turns whatever happens in a handler, and in the server's interceptors, into a status).
"""

from __future__ import annotations

import logging
import math
import os
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import h2.errors
import h2.exceptions
import trio

from prism.grpc import transport
from prism.grpc.call import ServerCall, error_from_exception, final_status
from prism.grpc.interceptor import CallOutcome, ServerInterceptor
from prism.grpc.tls import TLSStream
from prism.grpc.wire.events import (
    Event,
    FloodDetected,
    GoAwayReceived,
    InputEnded,
    MessagesReceived,
    PingAcknowledged,
    RequestReceived,
    StreamAborted,
    WindowUpdated,
)
from prism.grpc.wire.server_conn import ServerConnection
from prism.grpc.wire.status import GrpcError, Status, Unavailable

if TYPE_CHECKING:
    from prism.grpc.server import Server

log = logging.getLogger("prism.grpc.server")

_RECEIVE_SIZE = 1 << 16
_MAX_RECEIVE_SIZE = 1 << 20
_STREAM_GONE = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError)
# After the final GOAWAY: how long to wait for the peer to close before we do.
LINGER = 1.0
# A client stream's reads are gathered (ServerOptions.client_stream_gather) only once it has
# brought this many messages: a short stream ends as soon as its last message is read.
GATHER_AFTER = 128


class Connection:
    """One accepted connection: its reader and writer tasks, its watchdogs (handshake,
    idle, age, keepalive) and one task per RPC, in one nursery that ends with it."""

    def __init__(
        self,
        server: Server,
        stream: trio.abc.Stream,
        handshake_deadline: float,
        received: bytes = b"",
    ) -> None:
        self.server = server
        self.stream = stream
        # Bytes a listener read before handing the connection over (Server.serve_connection).
        self._received = received
        opts = server.options
        self.conn = ServerConnection(
            server._settings,
            max_receive_message_size=opts.max_receive_message_size,
            compression=opts.compression,
            flood=server._flood,
            clock=trio.current_time,
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
        # The client's preface and SETTINGS arrived and it acknowledged ours.
        self._greeted = trio.Event()
        self._greeting = True
        self._handshake_deadline = handshake_deadline
        self._scope = trio.CancelScope()
        self._rpc_nursery: trio.Nursery | None = None
        self._closing = False
        self._initiated = False  # the HTTP/2 connection exists (TLS handshake done)
        # max_connection_idle: when the last call ended (None: idleness is not watched).
        self._idle_since: float | None = None
        self._woke = False  # the events just dispatched woke a handler waiting for messages
        # The client-streaming call (unary response) the events just dispatched fed, if any.
        self._fed: ServerCall | None = None
        self._gather = opts.client_stream_gather
        self._gather_window = server._settings.initial_window_size // 4

    # The pieces ServerCall uses --------------------------------------------------------------

    async def wait_writable(self, stream_id: int) -> None:
        """Block while ``stream_id`` has more than one window's worth queued (back-pressure)."""
        limit = self.conn.settings.initial_window_size
        while self.conn.pending(stream_id) > limit:
            self.kick()  # what is queued must go out for the window to reopen
            await self._window.wait()

    # ------------------------------------------------------------------------------------

    async def run(self) -> None:
        opts = self.server.options
        with self._scope:
            with trio.CancelScope(deadline=self._handshake_deadline) as handshake:
                if isinstance(self.stream, (TLSStream, trio.SSLStream)):
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
                self.server.counters.handshake_timeouts += 1
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
                nursery.start_soon(self._handshake_watch)
                if opts.keepalive_time:
                    nursery.start_soon(self._keepalive, opts.keepalive_time)
                if opts.max_connection_idle is not None:
                    self._idle_since = trio.current_time()
                    nursery.start_soon(self._idle_watch, opts.max_connection_idle)
                if opts.max_connection_age is not None:
                    nursery.start_soon(
                        self._age_watch, opts.max_connection_age, opts.max_connection_age_grace
                    )
                if self.server._closing:
                    self.start_shutdown()
                await self._reader()
                nursery.cancel_scope.cancel()

    def cancel(self) -> None:
        self._scope.cancel()

    def cancel_calls(self) -> None:
        for call in list(self.calls.values()):
            call.cancel()

    def start_shutdown(self, debug: bytes = b"") -> None:
        if not self._initiated:
            self._scope.cancel()  # still in the TLS handshake: nothing in flight to drain
            return
        if not self._closing:
            self._closing = True
            self.conn.start_shutdown(debug)
            self.kick()
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._closing and not self.calls and not self.conn.has_pending_output():
            self.conn.close()
            self.kick()

    async def _reader(self) -> None:
        conn = self.conn
        source = transport.Input(self.stream)
        receive = source.receive
        size = _RECEIVE_SIZE
        received, self._received = self._received, b""
        while True:
            if received:
                data: bytes | bytearray = received
                received = b""
                emptied = False
            else:
                data = await receive(size)
                if not data:
                    self._peer_closed.set()
                    return
                emptied = len(data) < size  # the read took all there was
                # Bulk transfers fill every read: read more at a time (fewer trips through h2).
                if len(data) == size:
                    size = min(size * 2, _MAX_RECEIVE_SIZE)
                elif size > _RECEIVE_SIZE and len(data) < size // 4:
                    size = _RECEIVE_SIZE
            if conn.closed:
                continue  # after our final GOAWAY: discard input until the peer closes
            while True:
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self.server.counters.protocol_errors += 1
                    log.info(
                        "closing connection from %s: HTTP/2 protocol error: %s",
                        self.peer_address,
                        exc,
                    )
                    # The writer sends the GOAWAY (two tasks may not send_all at once).
                    conn.close(h2.errors.ErrorCodes.PROTOCOL_ERROR, str(exc).encode()[:200])
                    self.kick()
                    break
                self._woke = False
                self._fed = None
                if self._dispatch(events):
                    return
                fed = self._fed
                if (
                    fed is not None
                    and self._gather
                    and emptied
                    and fed.received >= GATHER_AFTER
                    and not fed.input_ended
                    and len(self.calls) == 1
                    and self.calls.get(fed.stream_id) is fed
                    and conn.receive_window(fed.stream_id) >= self._gather_window
                ):
                    # A long client stream mid-flight, alone on the connection, and the read
                    # emptied the socket: its client writes message after message, each as it
                    # comes, and reading each as it lands costs a wake-up, a read and a frame
                    # walk per one or two messages. Sleeping a moment first gathers several
                    # per read. Nothing waits on these messages but the handler (the
                    # response comes at the end), and an empty socket after the sleep goes
                    # back to reading as soon as data arrives: a message after a pause is
                    # never held, nor is a client that used up most of its window (it may be
                    # waiting for our WINDOW_UPDATE; docs/benchmarks.md, "Client streams
                    # gathered").
                    source.delay(self._gather)
                elif self._woke:
                    # A request stream's handler waiting for messages got some and runs in
                    # the next batch: read again in that batch, without waiting for readiness
                    # first. A client writing message after message has put more in the
                    # socket by then, and this read and the handler share one pass through
                    # Trio's scheduler instead of one pass each; an empty socket falls back
                    # to waiting (docs/benchmarks.md, "Scheduler passes per read").
                    source.read_first()
                if self._greeting and conn.handshake_done:
                    self._greeting = False
                    self._greeted.set()
                self._maybe_finish()
                self.kick()
                if not conn.input_pending:
                    break
                # The read held more frames than one pass takes (a flood of small frames):
                # let other connections' tasks run before the next pass.
                data = b""
                await trio.lowlevel.checkpoint()

    def _dispatch(self, events: list[Event]) -> bool:
        """Hand events to the calls; True when the connection is over (peer's GOAWAY error)."""
        for event in events:
            if type(event) is MessagesReceived:
                call = self.calls.get(event.stream_id)
                # Only a request stream's handler: a unary request that came in two reads
                # is all there is, and an early read would find nothing.
                if call is not None:
                    if call.feed(event.messages) and call.client_streaming:
                        self._woke = True
                    if call.gathers:
                        self._fed = call
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
                    return True
                self.start_shutdown()
            elif type(event) is FloodDetected:
                counters = self.server.counters
                setattr(counters, event.reason, getattr(counters, event.reason) + 1)
                log.warning(
                    "closing connection from %s: GOAWAY(ENHANCE_YOUR_CALM) %s",
                    self.peer_address,
                    event.reason,
                )
        return False

    async def _writer(self) -> None:
        await self._output.write_loop(self.stream.send_all, self._linger)

    async def _linger(self) -> None:
        # The final GOAWAY is out. Let the peer read it and close first: closing with unread
        # input makes the kernel send a TCP reset, which can destroy the GOAWAY and last
        # responses before the peer reads them.
        with trio.move_on_after(LINGER):
            await self._peer_closed.wait()
        self._scope.cancel()

    async def _handshake_watch(self) -> None:
        with trio.move_on_at(self._handshake_deadline):
            await self._greeted.wait()
            return
        self.server.counters.handshake_timeouts += 1
        if self.conn.settings_received:
            # It spoke HTTP/2 but never acknowledged our SETTINGS (RFC 9113 §6.5.3).
            log.info("closing connection from %s: SETTINGS not acknowledged", self.peer_address)
            self.conn.close(h2.errors.ErrorCodes.SETTINGS_TIMEOUT, b"settings not acknowledged")
            self.kick()  # the writer sends the GOAWAY, then closes
            return
        log.info(
            "connection from %s dropped: no HTTP/2 preface and SETTINGS in time", self.peer_address
        )
        self._scope.cancel()

    async def _idle_watch(self, limit: float) -> None:
        # grpc-go's MaxConnectionIdle: no RPC open for ``limit`` seconds → graceful GOAWAY.
        while True:
            since = self._idle_since
            if self.calls or since is None:
                await trio.sleep(limit)
                continue
            await trio.sleep_until(since + limit)
            if not self.calls and self._idle_since == since:
                self.server.counters.idle_closed += 1
                log.debug("closing idle connection from %s", self.peer_address)
                self.start_shutdown(b"max_idle")
                return

    async def _age_watch(self, age: float, grace: float | None) -> None:
        # grpc-go's MaxConnectionAge (±10% jitter, so connections made together do not all
        # reconnect together) and MaxConnectionAgeGrace (then RPCs still open are cancelled).
        await trio.sleep(age * (1 + self.server._random.uniform(-0.1, 0.1)))
        self.server.counters.age_closed += 1
        self.start_shutdown(b"max_age")
        if grace is None:
            return
        await trio.sleep(grace)
        self.cancel_calls()  # their clients get UNAVAILABLE; then the final GOAWAY goes out
        await trio.sleep(LINGER)
        self.cancel()

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
        # An outcome's duration counts from here, as the deadline does (not from when the
        # call's task first runs): a call that hit its deadline lasted at least its timeout.
        now = trio.current_time()
        deadline = now + event.timeout if event.timeout is not None else math.inf
        call = ServerCall(self, sid, event.method, event.metadata, self.peer, deadline, handler[0])
        self.calls[sid] = call
        assert self._rpc_nursery is not None
        self._rpc_nursery.start_soon(self._run_call, call, handler[1], now)

    async def _run_call(self, call: ServerCall, func: Callable[..., Any], started: float) -> None:
        # The boundary for one RPC: whatever happens here ends this stream, never the connection.
        status, message, extra = Status.OK, "", []
        interceptors = self.server.interceptors
        entered = 0  # interceptors whose before() was called
        failure: BaseException | None = None
        ended = False
        try:
            with trio.CancelScope(deadline=call.deadline) as scope:
                call.scope = scope
                if call.cancelled or call.aborted is not None:  # before the task started
                    scope.cancel()
                if interceptors:
                    for interceptor in interceptors:
                        entered += 1
                        await interceptor.before(call)
                await call.invoke(func)
            if scope.cancelled_caught and call.aborted is None:
                if call.cancelled:
                    status, message = Unavailable.status, "the server is shutting down"
                else:
                    status, message = Status.DEADLINE_EXCEEDED, "deadline exceeded"
            ended = True
        except Exception as exc:
            failure = exc
            error = (
                exc
                if isinstance(exc, GrpcError)
                else error_from_exception(exc, call.method, call.trace_id)
            )
            status, message, extra = error.status, error.message, error.trailers
            ended = True
        finally:
            if not ended:  # the connection's own cancellation (it is closing)
                status, message = Unavailable.status, "the connection is closing"
            if call.aborted is None:
                # Read the trailing metadata only now: the handler may have set it any time.
                trailers = call.trailing_metadata
                if extra:
                    trailers = [*trailers, *extra]
                if trailers:
                    status, message, trailers = final_status(call.method, status, message, trailers)
                try:  # noqa: SIM105 (contextlib.suppress costs a context manager per RPC)
                    self.conn.send_trailers(call.stream_id, status, message, trailers)
                except _STREAM_GONE:
                    pass
            else:
                status, message = call.aborted.status, call.aborted.message
            self.conn.finish(call.stream_id)
            self.calls.pop(call.stream_id, None)
            if self._idle_since is not None and not self.calls:
                self._idle_since = trio.current_time()
            self._maybe_finish()
            self.kick()
            if entered:
                outcome = CallOutcome(status, message, trio.current_time() - started, failure)
                _after(interceptors[:entered], call, outcome)


def _after(
    interceptors: Sequence[ServerInterceptor], call: ServerCall, outcome: CallOutcome
) -> None:
    for interceptor in reversed(interceptors):
        try:
            interceptor.after(call, outcome)
        except Exception as exc:  # an interceptor's bug: logged; the outcome stands
            trace_id = call.trace_id
            log.error(
                "%s: interceptor %r failed after the call (trace id %s)",
                call.method,
                interceptor,
                trace_id,
                exc_info=exc,
                extra={"trace_id": trace_id},
            )
