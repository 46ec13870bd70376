"""The server side of one gRPC connection, sans-IO.

``receive_data(bytes) -> [events]``; verbs ``send_headers``, ``send_message``,
``send_trailers`` (:mod:`~prism.grpc.wire.server_responses`); then ``data_to_send()``.
Requests the transport must refuse (wrong method, content type, malformed headers: see
:mod:`~prism.grpc.wire.grpc_request`) are answered here and never become events.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import h2.errors
import h2.events
import h2.exceptions

from prism.grpc.wire import compression as codec
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
from prism.grpc.wire.flood import FloodGuard, FloodLimits
from prism.grpc.wire.framing import HEADER, MessageDecoder
from prism.grpc.wire.grpc_request import NotGrpc, parse_request
from prism.grpc.wire.h2conn import _H2, Settings
from prism.grpc.wire.h2frames import FrameReader
from prism.grpc.wire.server_responses import ServerResponses, ServerStream
from prism.grpc.wire.status import (
    Cancelled,
    GrpcError,
    Internal,
)

# Frames one receive_data call processes at most (see FrameReader.budget): ~1-3 ms of work at
# worst (100 streams opened and reset). A read of requests from h2load's or grpcio's 16-100
# streams fits in one pass; merged DATA frames count as one.
FRAMES_PER_PASS = 200


def _rest_of_frame(buffered: bytearray, available: int) -> int:
    """How many bytes complete the one partial frame in ``buffered``; 0 if unknown (not
    even its header is there) or more than ``available``."""
    if len(buffered) < 9:
        return 0
    need = 9 + ((buffered[0] << 16) | (buffered[1] << 8) | buffered[2]) - len(buffered)
    return need if 0 < need <= available else 0


class ServerConnection(ServerResponses):
    """The server side of one connection.

    ``flood``: the budgets of :class:`~prism.grpc.wire.flood.FloodGuard`, read on ``clock``
    (seconds; the I/O layer passes its own, e.g. ``trio.current_time``). Past a budget the
    connection sends GOAWAY(ENHANCE_YOUR_CALM), reports :class:`FloodDetected` and is closed.

    ``compression``: compress responses with this encoding (``gzip`` or ``deflate``) for
    clients whose ``grpc-accept-encoding`` lists it; others get identity. None: never.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_receive_message_size: int,
        compression: str | None = None,
        flood: FloodLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings or Settings(), compression, FloodGuard(flood or FloodLimits()))
        self._max_receive = max_receive_message_size
        self._goaway_sent: int | None = None
        self._clock = clock
        self._refused = 0  # h2's count of streams refused (over the limit), as last seen
        #: The client's preface and first SETTINGS frame have arrived.
        self.settings_received = False
        #: The client acknowledged our SETTINGS (RFC 9113 §6.5.3).
        self.settings_acked = False
        # Requests reported by the receive_data call in progress (see _on_reset).
        self._fresh: set[int] = set()
        self._dropped: set[int] = set()
        # Streams aborted by the receive_data call in progress: told to stop sending at its end
        # (see _abort).
        self._stopping: list[int] = []

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the socket. Raises ``h2.exceptions.ProtocolError`` when the peer
        broke HTTP/2; the caller then sends :meth:`close`'s GOAWAY and drops the connection.

        At most :attr:`frames_per_pass` frames are processed per call; while
        :attr:`input_pending`, call again (with ``b""``) after letting other work run.

        A request the client reset within the same call is never reported (nor its messages):
        no work starts for it. That is what a rapid-reset attack sends.

        Messages are reported as :class:`MessagesReceived`: one event per stream per call.
        """
        h2c = self._h2
        frames = h2c.frames
        frames.budget = self.frames_per_pass
        frames.exhausted = False
        self._acks = {}
        try:
            out = self._receive(h2c, frames, data)
        finally:
            self._acknowledge_read()
            if self._stopping:
                for sid in self._stopping:
                    self._sent_end(sid)
                self._stopping.clear()
        fresh = self._fresh
        if fresh:
            fresh.clear()
            if self._dropped:
                dropped = self._dropped
                out = [e for e in out if getattr(e, "stream_id", None) not in dropped]
                dropped.clear()
        return out

    def _receive(self, h2c: _H2, frames: FrameReader, data: bytes | bytearray) -> list[Event]:
        out: list[Event] = []
        if data and self._streams and self.fast_data:
            if type(data) is not bytes:
                data = bytes(data)  # messages are sliced from it: it must not change
            pos = 0
            buffered = frames._data
            if buffered:
                # The end of a frame an earlier read began (reads of a busy stream end
                # mid-frame): h2 takes that frame, the fast path what follows it.
                pos = _rest_of_frame(buffered, len(data))
                if pos:
                    self._on_h2_events(h2c.receive_data(data[:pos]), out)
            if not frames._data and not self.closed:
                runs: list[tuple[int, int, int]] = []
                taken = h2c.take_data_frames(data, pos, self._streams, runs)
                if runs:
                    self._on_data_frames(data, runs, out)
                    if taken == len(data):
                        data = b""
                    elif frames.exhausted:
                        frames.add_data(memoryview(data)[taken:])
                        data = b""
                    else:
                        data = memoryview(data)[taken:]  # type: ignore[assignment]
                elif pos:
                    data = memoryview(data)[pos:]  # type: ignore[assignment]
            elif pos:
                data = memoryview(data)[pos:]  # type: ignore[assignment]
        if (data or frames._data) and not self.closed:
            self._on_h2_events(h2c.receive_data(data), out)
        refused = h2c.refused_streams - self._refused
        if refused and not self.closed:
            self._refused += refused
            now = self._clock()
            for _ in range(refused):
                if self._check(self._guard.reset(now), out):
                    break
        return out

    #: Frames one :meth:`receive_data` call processes at most (tests use small budgets to
    #: put the ends of passes everywhere).
    frames_per_pass = FRAMES_PER_PASS

    #: Take plain DATA frames without h2's events (``_H2.take_data_frames``). Off, every frame
    #: goes through h2: tests compare the two.
    fast_data = True

    def _on_h2_events(self, events: list[h2.events.Event], out: list[Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._on_data(event, out)
            elif isinstance(event, h2.events.RequestReceived):
                self._on_request(event, out)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_input_ended(event.stream_id, out)
            elif isinstance(event, h2.events.StreamReset):
                self._on_reset(event.stream_id, out)
            elif isinstance(event, h2.events.WindowUpdated):
                self._flush_all()
                out.append(WindowUpdated())
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received = True
                self._flush_all()
                out.append(WindowUpdated())
                self._check(self._guard.settings(self._clock()), out)
            elif isinstance(event, h2.events.TrailersReceived):
                # gRPC clients never send trailers; treat them as the end of the request.
                self._on_input_ended(event.stream_id, out)
            elif isinstance(event, h2.events.PingReceived):
                self._check(self._guard.ping(self._clock(), len(self._streams)), out)
            elif isinstance(event, h2.events.PingAckReceived):
                out.append(PingAcknowledged(event.ping_data or b""))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway_received = event.last_stream_id or 0
                out.append(GoAwayReceived(event.last_stream_id or 0, int(event.error_code or 0)))
            elif isinstance(event, h2.events.SettingsAcknowledged):
                self.settings_acked = True
            if self.closed:
                return  # flooded: nothing more is processed

    def _on_data_frames(
        self, data: bytes, runs: list[tuple[int, int, int]], out: list[Event]
    ) -> None:
        """Messages from DATA payloads ``data[start:end]``, taken by the fast path: the same
        outcome as :meth:`_on_data` for each, with one report per stream."""
        streams = self._streams
        sid = flow = size = 0
        stream: ServerStream | None = None
        messages: list[bytes] = []
        for frame_sid, start, end in runs:
            if frame_sid != sid:
                if sid:
                    self._data_done(sid, stream, flow, size, messages, out)
                    messages = []
                sid, flow, size = frame_sid, 0, 0
                stream = streams.get(sid)
            flow += end - start
            if stream is None:
                continue  # gone (aborted below): its bytes are only given back
            try:
                size += stream.decoder.feed(data, start, end, messages)
            except GrpcError as exc:
                self._data_done(sid, stream, flow, size, messages, out)
                self._abort(sid, exc, out)
                stream, flow, size, messages = None, 0, 0, []
        self._data_done(sid, stream, flow, size, messages, out)

    def _data_done(
        self,
        sid: int,
        stream: ServerStream | None,
        flow: int,
        size: int,
        messages: list[bytes],
        out: list[Event],
    ) -> None:
        if stream is None:
            if flow:
                self._give_back(sid, flow)
            return
        self._received(sid, flow, size)
        if messages:
            out.append(MessagesReceived(sid, messages))

    @property
    def handshake_done(self) -> bool:
        """The client sent its preface and SETTINGS, and acknowledged ours."""
        return self.settings_received and self.settings_acked

    @property
    def input_pending(self) -> bool:
        """Received frames are still buffered: the last :meth:`receive_data` stopped at its
        budget of frames."""
        return self._h2.frames.exhausted and not self.closed

    def _check(self, flooded: bytes | None, out: list[Event]) -> bool:
        if flooded is None:
            return False
        # What this pass queued in answer to the flood (RST_STREAMs, PING ACKs) goes unsent:
        # only the GOAWAY does.
        self._h2.clear_outbound_data_buffer()
        self._extra.clear()
        self.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, flooded)
        out.append(FloodDetected(flooded.decode()))
        return True

    def _on_reset(self, sid: int, out: list[Event]) -> None:
        self._batches.pop(sid, None)
        self._stream_finished(sid)
        if self._streams.pop(sid, None) is not None:
            if sid in self._fresh:
                self._dropped.add(sid)  # reported in this same call: take the report back
            else:
                out.append(StreamAborted(sid, Cancelled("cancelled by the client")))
        self._check(self._guard.reset(self._clock()), out)

    def _on_request(self, event: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = event.stream_id
        if self._goaway_sent is not None and sid > self._goaway_sent:
            self.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._check(self._guard.reset(self._clock()), out)
            return
        try:
            request = parse_request(event.headers or ())
        except NotGrpc as exc:
            self._http_error(sid, exc.status, exc.text)
            return
        except GrpcError as exc:
            self._reject(sid, exc)
            return
        request_encoding, accept = request.encoding, request.accept_encoding
        decoder = MessageDecoder(self._max_receive)
        if request_encoding is not None:
            decoder.encoding = request_encoding
        stream = self._streams[sid] = ServerStream(decoder)
        # Never compress with an encoding the client did not say it accepts.
        compress = self._compression
        if compress is not None and accept and compress in codec.parse_accept_encoding(accept):
            stream.send_encoding = compress
        self._fresh.add(sid)
        out.append(
            RequestReceived(sid, request.path, request.metadata, request.timeout, request.authority)
        )

    def _on_data(self, event: h2.events.DataReceived, out: list[Event]) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        flow = event.flow_controlled_length or 0
        if stream is None:
            # A stream we already answered or refused: give the window back, drop the bytes.
            if flow:
                self._give_back(sid, flow)
            return
        try:
            messages = stream.decoder.receive_data(event.data or b"")
        except GrpcError as exc:
            self._received(sid, flow, 0)
            self._abort(sid, exc, out)
            return
        if messages:
            self._received(sid, flow, sum([len(m) for m in messages]) + HEADER.size * len(messages))
            out.append(MessagesReceived(sid, messages))
        else:
            self._received(sid, flow, 0)

    def _on_input_ended(self, sid: int, out: list[Event]) -> None:
        stream = self._streams.get(sid)
        self._inbound_finished(sid)
        if stream is None:
            return
        if stream.decoder.partial:
            self._abort(sid, Internal("request stream ended in the middle of a message"), out)
        else:
            out.append(InputEnded(sid))

    def _abort(self, sid: int, error: GrpcError, out: list[Event]) -> None:
        """The request is broken: answer with ``error`` and stop the client sending."""
        stream = self._streams.pop(sid, None)
        self._out.pop(sid, None)
        self._batches.pop(sid, None)
        headers = self._status_headers(
            error.status,
            error.message,
            error.trailers,
            trailers_only=stream is None or not stream.headers_sent,
        )
        try:
            self._h2.send_headers(sid, headers, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        else:
            # RST_STREAM(NO_ERROR) once this read is processed, and only if the client's side is
            # still open by then: its END_STREAM may be later in the same read. Both input paths
            # (h2's events for the whole read, the fast path frame by frame) then agree, and a
            # client that had finished is not reset.
            self._stopping.append(sid)
        self._stream_finished(sid)
        out.append(StreamAborted(sid, error))

    def _reject(self, sid: int, error: GrpcError) -> None:
        headers = self._status_headers(error.status, error.message, (), trailers_only=True)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.send_headers(sid, headers, end_stream=True)
        self._sent_end(sid)

    def _http_error(self, sid: int, status: bytes, text: bytes) -> None:
        try:
            self._h2.send_headers(
                sid, [(b":status", status), (b"content-type", b"text/plain")], end_stream=False
            )
            self._h2.send_data(sid, text, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._sent_end(sid)

    def finish(self, stream_id: int) -> None:
        """The application is done with the stream (its RPC task ended)."""
        if self._batches:
            self._batches.pop(stream_id, None)  # trailers flushed it, unless the stream is gone
        if self._streams.pop(stream_id, None) is not None:
            self._inbound_finished(stream_id)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def start_shutdown(self, debug: bytes = b"") -> None:
        """Graceful GOAWAY: streams opened so far finish; later ones are refused."""
        if self._goaway_sent is None:
            self._goaway_sent = self.highest_inbound_stream_id
            self.send_goaway(self._goaway_sent, debug=debug)
