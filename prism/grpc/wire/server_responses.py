"""The server side of one gRPC connection, sans-IO: the responses.

Response headers, messages (small ones of a streaming handler joined into shared DATA frames),
and trailers, queued behind HTTP/2 flow control.
:class:`~prism.grpc.wire.server_conn.ServerConnection` adds the input side: requests, their
messages, resets and the connection's defences.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import h2.errors
import h2.exceptions
from h2.stream import StreamState

from prism.grpc.wire import compression as codec
from prism.grpc.wire import metadata as md
from prism.grpc.wire.flood import FloodGuard
from prism.grpc.wire.framing import HEADER, MessageDecoder, Pieces
from prism.grpc.wire.h2conn import H2Base, Settings
from prism.grpc.wire.status import Status, encode_grpc_message

_RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    # What we accept, on every response (compression.md: a server tells its clients).
    (b"grpc-accept-encoding", codec.ACCEPT_ENCODING),
]
# Small messages are copied behind their 5-byte prefix so each becomes a single DATA frame.
_COALESCE_LIMIT = 1 << 16


@dataclass(slots=True)
class ServerStream:
    """What the server keeps per open stream."""

    decoder: MessageDecoder
    headers_sent: bool = False
    ended: bool = False  # trailers queued
    # The encoding responses are compressed with (None: identity), chosen at request time.
    send_encoding: str | None = None


class ServerResponses(H2Base):
    """What a server sends on its streams. ``compression``: see ServerConnection."""

    def __init__(self, settings: Settings, compression: str | None, guard: FloodGuard) -> None:
        super().__init__(client_side=False, settings=settings)
        codec.check_encoding(compression)
        # Small messages of a stream sent with batch=True, not queued for sending yet: they go
        # out as few DATA frames, joined when output is taken (see send_message).
        self._batches: dict[int, bytearray] = {}
        self._compression = None if compression == codec.IDENTITY else compression
        self._encoded_headers = (
            [*_RESPONSE_HEADERS, (b"grpc-encoding", self._compression.encode())]
            if self._compression
            else _RESPONSE_HEADERS
        )
        self._streams: dict[int, ServerStream] = {}
        # Told when we write (a ping-flood budget depends on it; see flood.FloodGuard).
        self._guard = guard

    def send_headers(self, stream_id: int, metadata: md.MetadataLike = ()) -> None:
        stream = self._streams[stream_id]
        if stream.headers_sent:
            return
        # Encode (and validate) first: invalid metadata must leave the stream untouched.
        base = self._encoded_headers if stream.send_encoding else _RESPONSE_HEADERS
        headers = base + md.encode(metadata) if metadata else base
        stream.headers_sent = True
        self._guard.wrote = True
        self._h2.send_headers(stream_id, headers)

    def send_message(
        self, stream_id: int, data: bytes | Pieces, *, compress: bool = True, batch: bool = False
    ) -> None:
        """Queue one response message; compressed when the stream's responses are (see the
        class) unless ``compress`` is False (one message in the clear, e.g. against CRIME).

        ``batch``: more messages are likely to follow at once (a streaming handler). Small
        messages are then collected and handed to HTTP/2 together, up to a frame's worth, when
        output is next taken (:meth:`output`, :meth:`data_to_send`) or the stream ends: one
        DATA frame for many messages instead of one each. The caller must make sure output is
        taken (the server's writer task); a batch holds less than one frame, so flow control's
        back-pressure (:meth:`pending`) does not count it.
        """
        stream = self._streams[stream_id]
        if not stream.headers_sent:
            self.send_headers(stream_id)
        if stream.send_encoding is not None and compress:
            data = codec.compress(stream.send_encoding, bytes(data))
            prefix = HEADER.pack(1, len(data))
        else:
            prefix = HEADER.pack(0, len(data))
        batches = self._batches
        self._guard.wrote = True
        if len(data) <= _COALESCE_LIMIT:
            if isinstance(data, Pieces):
                data = bytes(data)
            if batch:
                pending = batches.get(stream_id)
                if pending is None:
                    pending = batches[stream_id] = bytearray(prefix)
                else:
                    pending += prefix
                pending += data
                if len(pending) >= self._h2.max_outbound_frame_size:
                    self._flush_batch(stream_id)
                return
            if batches:
                self._flush_batch(stream_id)
            self._queue(stream_id, prefix + data)
        else:
            if batches:
                self._flush_batch(stream_id)
            if isinstance(data, Pieces):
                # The head goes with the prefix; the body is sent from its own buffer.
                self._queue(stream_id, prefix + data.head)
                self._queue(stream_id, data.body, body=True)
                if data.tail:
                    self._queue(stream_id, data.tail, body=True)
            else:
                self._queue(stream_id, prefix)
                self._queue(stream_id, data, body=True)

    def _flush_batch(self, stream_id: int) -> None:
        pending = self._batches.pop(stream_id, None)
        if pending is not None and not self.closed:
            # The bytearray is never touched again: it can be sent without a copy.
            self._queue(stream_id, memoryview(pending))

    def _flush_batches(self) -> None:
        for stream_id in list(self._batches):
            try:
                self._flush_batch(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._out.pop(stream_id, None)  # the stream went away under it

    # wants_write() does not flush batches (it runs on every kick): a batching sender wakes
    # the writer task itself, whose output() call flushes them; trailers flush their own.

    def output(self) -> list[bytes | bytearray | memoryview]:
        if self._batches:
            self._flush_batches()
        return super().output()

    def data_to_send(self) -> bytes:
        if self._batches:
            self._flush_batches()
        return super().data_to_send()

    def close(self, error_code: int = 0, debug: bytes = b"") -> None:
        self._batches.clear()
        super().close(error_code, debug)

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
        if self._batches:
            self._flush_batch(stream_id)
        self._guard.wrote = True
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

    def discard_unsent(self, stream_id: int) -> int:
        # A batch not yet handed to HTTP/2 is unsent too, and comes after everything queued.
        batch = self._batches.pop(stream_id, None)
        return (0 if batch is None else len(batch)) + super().discard_unsent(stream_id)

    def end_at_once(
        self,
        stream_id: int,
        status: Status,
        message: str = "",
        metadata: md.MetadataLike = (),
    ) -> bool:
        """End the RPC now, dropping every response message flow control still holds back.

        When no message is half-sent (or the rest of the one begun can go out at once), the
        trailers follow right behind what went out; otherwise the stream is reset with
        RST_STREAM(ENHANCE_YOUR_CALM), which gRPC clients read as RESOURCE_EXHAUSTED (without
        ``message``: a reset carries none). True when it was reset."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:
            return False
        self.discard_unsent(stream_id)
        out = self._out.get(stream_id)
        if out is None or not out.chunks:
            self.send_trailers(stream_id, status, message, metadata)
            return False
        stream.ended = True
        self.reset_stream(stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        return True

    def has_pending_output(self) -> bool:
        return bool(self._out) or bool(self._batches)

    def _sent_end(self, stream_id: int) -> None:
        # The response is complete but the client is still sending (it was answered early, or
        # refused): RST_STREAM(NO_ERROR) tells it to stop (RFC 9113 §8.1), as grpc-go does.
        # Otherwise the half-closed stream would count against max_concurrent_streams forever.
        stream = self._h2.streams.get(stream_id)
        if stream is not None and stream.state_machine.state is StreamState.HALF_CLOSED_LOCAL:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
