"""The client side of one gRPC connection, sans-IO."""

from __future__ import annotations

from dataclasses import dataclass

import h2.errors
import h2.events
import h2.exceptions

from prism.grpc.wire import compression as codec
from prism.grpc.wire import metadata as md
from prism.grpc.wire.events import (
    Event,
    GoAwayReceived,
    MessageReceived,
    PingAcknowledged,
    ResponseEnded,
    ResponseHeadersReceived,
    StreamAborted,
    WindowUpdated,
)
from prism.grpc.wire.framing import HEADER, MessageDecoder, Pieces
from prism.grpc.wire.h2conn import H2Base, Settings
from prism.grpc.wire.server_conn import _rest_of_frame
from prism.grpc.wire.status import (
    GrpcError,
    Internal,
    Status,
    Unavailable,
    decode_grpc_message,
)
from prism.grpc.wire.timeout import encode_timeout

_COALESCE_LIMIT = 1 << 16

# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_TO_STATUS = {
    400: Status.INTERNAL,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.UNIMPLEMENTED,
    429: Status.UNAVAILABLE,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.UNAVAILABLE,
}

_RESET_TO_STATUS = {
    h2.errors.ErrorCodes.NO_ERROR: Status.INTERNAL,
    h2.errors.ErrorCodes.REFUSED_STREAM: Status.UNAVAILABLE,
    h2.errors.ErrorCodes.CANCEL: Status.CANCELLED,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: Status.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: Status.PERMISSION_DENIED,
}


@dataclass(slots=True)
class _Stream:
    decoder: MessageDecoder
    headers_received: bool = False
    done: bool = False
    send_encoding: str | None = None  # requests are compressed with it (None: identity)


class ClientConnection(H2Base):
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        authority: str,
        scheme: str = "http",
        user_agent: str = "prism-grpc",
        max_receive_message_size: int,
    ) -> None:
        super().__init__(client_side=True, settings=settings or Settings())
        self._max_receive = max_receive_message_size
        self._streams: dict[int, _Stream] = {}
        self._base_headers = [
            (b":method", b"POST"),
            (b":scheme", scheme.encode()),
            (b":authority", authority.encode("idna")),
        ]
        self._tail_headers = [
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", user_agent.encode()),
            (b"grpc-accept-encoding", codec.ACCEPT_ENCODING),
        ]

    # -- output -----------------------------------------------------------------------------

    def can_open_stream(self) -> bool:
        if self.goaway_received is not None or self.closed:
            return False
        return self._h2.room_for_outbound()

    def start_request(
        self,
        method: str,
        metadata: md.MetadataLike = (),
        timeout: float | None = None,
        *,
        end: bool = False,
        compression: str | None = None,
    ) -> int:
        """Open a stream and send the request headers. ``end`` half-closes at once.
        ``compression`` (``gzip``, ``deflate``): the encoding request messages are sent in."""
        sid = self._h2.get_next_available_stream_id()
        headers = [*self._base_headers, (b":path", method.encode()), *self._tail_headers]
        if timeout is not None:
            headers.append((b"grpc-timeout", encode_timeout(timeout).encode()))
        if compression is not None and compression != codec.IDENTITY:
            codec.check_encoding(compression)
            headers.append((b"grpc-encoding", compression.encode()))
        else:
            compression = None
        if metadata:
            headers.extend(md.encode(metadata))
        self._h2.send_headers(sid, headers, end_stream=end)
        self._streams[sid] = _Stream(MessageDecoder(self._max_receive), send_encoding=compression)
        return sid

    def send_message(
        self, stream_id: int, data: bytes | Pieces, *, end: bool = False, compress: bool = True
    ) -> None:
        """Queue one request message; compressed if the stream has an encoding and
        ``compress`` (False sends this one message uncompressed, e.g. against CRIME).
        A large message's payload (of :class:`Pieces`: its body) is sent from its own buffer."""
        stream = self._streams.get(stream_id)
        if compress and stream is not None and stream.send_encoding is not None:
            data = codec.compress(stream.send_encoding, bytes(data))
            prefix = HEADER.pack(1, len(data))
        else:
            prefix = HEADER.pack(0, len(data))
        if len(data) <= _COALESCE_LIMIT:
            # END_STREAM on the same frame
            self._queue(stream_id, prefix + bytes(data), end=end)
        elif isinstance(data, Pieces):
            self._queue(stream_id, prefix + data.head)
            if data.tail:
                self._queue(stream_id, data.body, body=True)
                self._queue(stream_id, data.tail, end=end, body=True)
            else:
                self._queue(stream_id, data.body, end=end, body=True)
        else:
            self._queue(stream_id, prefix)
            self._queue(stream_id, data, end=end)

    def end_request(self, stream_id: int) -> None:
        self._queue_end(stream_id, None)

    def cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    def finish(self, stream_id: int) -> None:
        """The call is over (its response ended). A request side still open is closed with
        RST_STREAM(NO_ERROR), so the stream stops counting against the concurrency limit."""
        if self._streams.pop(stream_id, None) is not None:
            stream = self._h2.streams.get(stream_id)
            if stream is not None and not stream.closed:
                self.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
            else:
                self._inbound_finished(stream_id)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    # -- input ------------------------------------------------------------------------------

    #: Take plain DATA frames without h2's frame objects and events (``_H2.take_data_frames``,
    #: as the server's connection does). Off, every frame goes through h2: tests compare them.
    fast_data = True

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Raises ``h2.exceptions.ProtocolError`` when the server broke HTTP/2.

        Plain DATA frames on open streams are taken straight from ``data`` (the bytes read):
        a message is sliced or joined from their payloads once, where through h2 each payload
        was copied into its frame buffer, then out of it, then joined."""
        out: list[Event] = []
        h2c = self._h2
        frames = h2c.frames
        if data and self._streams and self.fast_data:
            if type(data) is not bytes:
                data = bytes(data)  # messages are sliced from it: it must not change
            pos = 0
            if frames._data:
                # The end of a frame an earlier read began: h2 takes it, the fast path the rest.
                pos = _rest_of_frame(frames._data, len(data))
                if pos:
                    self._on_h2_events(h2c.receive_data(data[:pos]), out)
            if not frames._data and not self.closed:
                runs: list[tuple[int, int, int]] = []
                taken = h2c.take_data_frames(data, pos, self._streams, runs)
                if runs:
                    self._on_data_frames(data, runs, out)
                    pos = taken
            if pos:
                data = memoryview(data)[pos:]  # type: ignore[assignment]
        if data or frames._data:
            self._on_h2_events(h2c.receive_data(data), out)
        return out

    def _on_data_frames(
        self, data: bytes, runs: list[tuple[int, int, int]], out: list[Event]
    ) -> None:
        """Messages from the DATA payloads ``data[start:end]`` the fast path took: what
        :meth:`_on_data` makes of each."""
        streams = self._streams
        for sid, start, end in runs:
            flow = end - start
            stream = streams.get(sid)
            if stream is None or stream.done:
                self._h2.acknowledge_data(flow, sid)
                continue
            messages: list[bytes] = []
            try:
                size = stream.decoder.feed(data, start, end, messages)
            except GrpcError as exc:
                self._received(sid, flow, 0)
                self._end(sid, out, exc)
                self.reset_stream(sid)
                continue
            self._received(sid, flow, size)
            for message in messages:
                out.append(MessageReceived(sid, message))

    def _on_h2_events(self, events: list[h2.events.Event], out: list[Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._on_data(event, out)
            elif isinstance(event, h2.events.ResponseReceived):
                self._on_headers(event.stream_id, event.headers or [], out)
            elif isinstance(event, h2.events.TrailersReceived):
                self._on_trailers(event.stream_id, event.headers or [], out)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self._streams.get(event.stream_id)
                self._inbound_finished(event.stream_id)
                if stream is not None and not stream.done:
                    self._end(event.stream_id, out, Internal("stream ended without a grpc-status"))
            elif isinstance(event, h2.events.StreamReset):
                self._stream_finished(event.stream_id)
                stream = self._streams.get(event.stream_id)
                # A reset after the response ended (a server's RST_STREAM(NO_ERROR) asking us
                # to stop sending) changes nothing about the call's outcome.
                if stream is not None and not stream.done:
                    del self._streams[event.stream_id]
                    code = _RESET_TO_STATUS.get(event.error_code, Status.INTERNAL)  # type: ignore[call-overload]
                    name = getattr(event.error_code, "name", event.error_code)
                    out.append(
                        StreamAborted(
                            event.stream_id,
                            GrpcError.for_status(code, f"stream reset by the server ({name})"),
                        )
                    )
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._flush_all()
                out.append(WindowUpdated())
            elif isinstance(event, h2.events.PingAckReceived):
                out.append(PingAcknowledged(event.ping_data or b""))
            elif isinstance(event, h2.events.ConnectionTerminated):
                last = event.last_stream_id or 0
                self.goaway_received = last
                out.append(GoAwayReceived(last, int(event.error_code or 0)))
                for sid in [s for s in self._streams if s > last]:
                    self._stream_finished(sid)
                    self._streams.pop(sid)
                    out.append(
                        StreamAborted(
                            sid,
                            Unavailable(
                                "the server is shutting down (GOAWAY); the call was not processed"
                            ),
                        )
                    )

    def _on_headers(self, sid: int, headers: list[tuple[bytes, bytes]], out: list[Event]) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            return
        http_status = content_type = b""
        encoding = b""
        has_status = False
        for name, value in headers:
            if name == b":status":
                http_status = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-status":
                has_status = True
            elif name == b"grpc-encoding":
                encoding = value
        if http_status != b"200":
            code = int(http_status) if http_status.isdigit() else 0
            status = _HTTP_TO_STATUS.get(code, Status.UNKNOWN)
            self._end(sid, out, GrpcError.for_status(status, f"HTTP status {code} from server"))
            self.reset_stream(sid)
            return
        # A trailers-only response carrying grpc-status is accepted without a content-type:
        # grpclib sends its errors (UNIMPLEMENTED, ...) that way, and grpc C-core accepts them.
        if not has_status and not content_type.startswith(b"application/grpc"):
            self._end(
                sid,
                out,
                Internal(f"server replied with content-type {content_type.decode('latin-1')!r}"),
            )
            self.reset_stream(sid)
            return
        stream.headers_received = True
        if has_status:  # trailers-only response
            self._on_trailers(sid, headers, out)
            return
        if encoding:
            response_encoding = encoding.decode("latin-1").strip().lower()
            if response_encoding not in codec.SUPPORTED:
                # compression.md: INTERNAL on the client, naming what we support.
                self._end(
                    sid,
                    out,
                    Internal(
                        f"server sent grpc-encoding {response_encoding!r}, which is not supported"
                        f" (supported: {codec.supported_list()})"
                    ),
                )
                self.reset_stream(sid)
                return
            stream.decoder.encoding = response_encoding
        try:
            out.append(ResponseHeadersReceived(sid, md.decode(headers), stream.decoder.encoding))
        except md.MetadataError as exc:
            self._end(sid, out, Internal(str(exc)))
            self.reset_stream(sid)

    def _on_data(self, event: h2.events.DataReceived, out: list[Event]) -> None:
        sid = event.stream_id
        flow = event.flow_controlled_length or 0
        stream = self._streams.get(sid)
        if stream is None or stream.done:
            if flow:
                self._h2.acknowledge_received_data(flow, sid)
            return
        try:
            messages = stream.decoder.receive_data(event.data or b"")
        except GrpcError as exc:
            self._received(sid, flow, 0)
            self._end(sid, out, exc)
            self.reset_stream(sid)
            return
        self._received(sid, flow, sum(len(m) for m in messages) + HEADER.size * len(messages))
        for message in messages:
            out.append(MessageReceived(sid, message))

    def _on_trailers(self, sid: int, headers: list[tuple[bytes, bytes]], out: list[Event]) -> None:
        stream = self._streams.get(sid)
        if stream is None or stream.done:
            return
        raw_status: bytes | None = None
        message = ""
        for name, value in headers:
            if name == b"grpc-status":
                raw_status = value
            elif name == b"grpc-message":
                message = decode_grpc_message(value.decode("latin-1"))
        try:
            trailers = md.decode(headers)
        except md.MetadataError as exc:
            self._end(sid, out, Internal(str(exc)))
            return
        if raw_status is None or not raw_status.isdigit():
            self._end(sid, out, Internal("response trailers carry no valid grpc-status"))
            return
        code = int(raw_status)
        if stream.decoder.partial and code == 0:
            self._end(sid, out, Internal("response ended in the middle of a message"))
            return
        stream.done = True
        try:
            status = Status(code)
        except ValueError:
            status, message = Status.UNKNOWN, f"unknown grpc-status {code}: {message}"
        out.append(ResponseEnded(sid, status, message, trailers))

    def _end(self, sid: int, out: list[Event], error: GrpcError) -> None:
        stream = self._streams.get(sid)
        if stream is not None:
            stream.done = True
        out.append(ResponseEnded(sid, error.status, error.message, error.trailers))
