"""The server side of one gRPC connection, sans-IO.

``receive_data(bytes) -> [events]``; verbs ``send_headers``, ``send_message``,
``send_trailers``; then ``data_to_send()``. Requests the transport must refuse (wrong method,
content type, malformed headers) are answered here and never become events.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import h2.errors
import h2.events
import h2.exceptions
from h2.stream import StreamState

from prism.grpc.wire import metadata as md
from prism.grpc.wire.events import (
    Event,
    GoAwayReceived,
    InputEnded,
    MessageReceived,
    PingAcknowledged,
    RequestReceived,
    StreamAborted,
    WindowUpdated,
)
from prism.grpc.wire.framing import HEADER, MessageDecoder
from prism.grpc.wire.h2conn import H2Base, Settings
from prism.grpc.wire.status import (
    Cancelled,
    GrpcError,
    Internal,
    InvalidArgument,
    Status,
    Unimplemented,
    encode_grpc_message,
)
from prism.grpc.wire.timeout import InvalidTimeout, parse_timeout

_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
# Small messages are copied behind their 5-byte prefix so each becomes a single DATA frame.
_COALESCE_LIMIT = 1 << 16


@dataclass(slots=True)
class _Stream:
    decoder: MessageDecoder
    headers_sent: bool = False
    ended: bool = False  # trailers queued


class ServerConnection(H2Base):
    def __init__(self, settings: Settings | None = None, *, max_receive_message_size: int) -> None:
        super().__init__(client_side=False, settings=settings or Settings())
        self._max_receive = max_receive_message_size
        self._streams: dict[int, _Stream] = {}
        self._goaway_sent: int | None = None

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the socket. Raises ``h2.exceptions.ProtocolError`` when the peer
        broke HTTP/2; the caller then sends :meth:`close`'s GOAWAY and drops the connection.
        """
        out: list[Event] = []
        for event in self._h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self._on_data(event, out)
            elif isinstance(event, h2.events.RequestReceived):
                self._on_request(event, out)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_input_ended(event.stream_id, out)
            elif isinstance(event, h2.events.StreamReset):
                self._stream_finished(event.stream_id)
                if self._streams.pop(event.stream_id, None) is not None:
                    out.append(StreamAborted(event.stream_id, Cancelled("cancelled by the client")))
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._flush_all()
                out.append(WindowUpdated())
            elif isinstance(event, h2.events.TrailersReceived):
                # gRPC clients never send trailers; treat them as the end of the request.
                self._on_input_ended(event.stream_id, out)
            elif isinstance(event, h2.events.PingAckReceived):
                out.append(PingAcknowledged(event.ping_data or b""))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway_received = event.last_stream_id or 0
                out.append(GoAwayReceived(event.last_stream_id or 0, int(event.error_code or 0)))
        return out

    def _on_request(self, event: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = event.stream_id
        if self._goaway_sent is not None and sid > self._goaway_sent:
            self.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        method = path = authority = content_type = te = b""
        timeout_raw: bytes | None = None
        encoding = b"identity"
        for name, value in event.headers or ():
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority" or name == b"host":
                authority = value
            elif name == b"content-type":
                content_type = value
            elif name == b"te":
                te = value
            elif name == b"grpc-timeout":
                timeout_raw = value
            elif name == b"grpc-encoding":
                encoding = value
        if method != b"POST":
            self._http_error(sid, b"405", b"gRPC requires POST")
            return
        if not content_type.startswith(b"application/grpc"):
            self._http_error(sid, b"415", b"content-type must be application/grpc")
            return
        if not path.startswith(b"/"):
            # h2's header validation is off (see h2conn): we check what we rely on ourselves.
            self._reject(sid, Internal("malformed request: missing or invalid :path"))
            return
        if te != b"trailers":
            self._reject(sid, Internal('missing "te: trailers" header: not a gRPC client?'))
            return
        if encoding != b"identity":
            # grpc-accept-encoding is a reserved header, not metadata: add it raw.
            error = Unimplemented(f"grpc-encoding {encoding.decode('latin-1')!r} is not supported")
            self._reject(sid, error, [(b"grpc-accept-encoding", b"identity")])
            return
        try:
            timeout = parse_timeout(timeout_raw) if timeout_raw is not None else None
            metadata = md.decode(event.headers or ())
        except InvalidTimeout as exc:
            self._reject(sid, InvalidArgument(str(exc)))
            return
        except md.MetadataError as exc:
            self._reject(sid, Internal(str(exc)))
            return
        self._streams[sid] = _Stream(MessageDecoder(self._max_receive))
        out.append(
            RequestReceived(
                sid,
                path.decode("utf-8", "replace"),
                metadata,
                timeout,
                authority.decode("latin-1"),
            )
        )

    def _on_data(self, event: h2.events.DataReceived, out: list[Event]) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        flow = event.flow_controlled_length or 0
        if stream is None:
            # A stream we already answered or refused: give the window back, drop the bytes.
            if flow:
                self._h2.acknowledge_received_data(flow, sid)
            return
        try:
            messages = stream.decoder.receive_data(event.data or b"")
        except GrpcError as exc:
            self._received(sid, flow, 0)
            self._abort(sid, exc, out)
            return
        self._received(sid, flow, sum(len(m) for m in messages) + HEADER.size * len(messages))
        for message in messages:
            out.append(MessageReceived(sid, message))

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
        headers = self._status_headers(
            error.status,
            error.message,
            error.trailers,
            trailers_only=stream is None or not stream.headers_sent,
        )
        try:
            self._h2.send_headers(sid, headers, end_stream=True)
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self._stream_finished(sid)
        out.append(StreamAborted(sid, error))

    def _reject(
        self, sid: int, error: GrpcError, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = self._status_headers(error.status, error.message, (), trailers_only=True)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.send_headers(sid, headers + (extra or []), end_stream=True)
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

    def _sent_end(self, stream_id: int) -> None:
        # The response is complete but the client is still sending (it was answered early, or
        # refused): RST_STREAM(NO_ERROR) tells it to stop (RFC 9113 §8.1), as grpc-go does.
        # Otherwise the half-closed stream would count against max_concurrent_streams forever.
        stream = self._h2.streams.get(stream_id)
        if stream is not None and stream.state_machine.state is StreamState.HALF_CLOSED_LOCAL:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    # -- output -----------------------------------------------------------------------------

    def send_headers(self, stream_id: int, metadata: md.MetadataLike = ()) -> None:
        stream = self._streams[stream_id]
        if stream.headers_sent:
            return
        # Encode (and validate) first: invalid metadata must leave the stream untouched.
        headers = _RESPONSE_HEADERS + md.encode(metadata) if metadata else _RESPONSE_HEADERS
        stream.headers_sent = True
        self._h2.send_headers(stream_id, headers)

    def send_message(self, stream_id: int, data: bytes) -> None:
        stream = self._streams[stream_id]
        if not stream.headers_sent:
            self.send_headers(stream_id)
        prefix = HEADER.pack(0, len(data))
        if len(data) <= _COALESCE_LIMIT:
            self._queue(stream_id, prefix + data)
        else:
            self._queue(stream_id, prefix)
            self._queue(stream_id, data, body=True)

    def send_trailers(
        self,
        stream_id: int,
        status: Status,
        message: str = "",
        metadata: md.MetadataLike = (),
    ) -> None:
        """End the RPC. Trailers-only when no headers went out yet; otherwise trailers follow
        whatever data is still queued behind flow control."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:
            return
        stream.ended = True
        if not stream.headers_sent:
            stream.headers_sent = True
            headers = self._status_headers(status, message, metadata, trailers_only=True)
            self._h2.send_headers(stream_id, headers, end_stream=True)
            self._sent_end(stream_id)
        else:
            self._queue_end(stream_id, self._status_headers(status, message, metadata))

    @staticmethod
    def _status_headers(
        status: Status, message: str, metadata: md.MetadataLike, *, trailers_only: bool = False
    ) -> list[tuple[bytes, bytes]]:
        headers = list(_RESPONSE_HEADERS) if trailers_only else []
        headers.append((b"grpc-status", b"%d" % status))
        if message:
            headers.append((b"grpc-message", encode_grpc_message(message).encode("ascii")))
        if metadata:
            headers.extend(md.encode(metadata))
        return headers

    def finish(self, stream_id: int) -> None:
        """The application is done with the stream (its RPC task ended)."""
        if self._streams.pop(stream_id, None) is not None:
            self._inbound_finished(stream_id)

    def has_pending_output(self) -> bool:
        return bool(self._out)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def start_shutdown(self) -> None:
        """Graceful GOAWAY: streams opened so far finish; later ones are refused."""
        if self._goaway_sent is None:
            self._goaway_sent = self.highest_inbound_stream_id
            self.send_goaway(self._goaway_sent)
