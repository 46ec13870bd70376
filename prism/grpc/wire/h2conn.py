"""The HTTP/2 layer shared by the server and client connections: h2 plus outbound buffering.

Things h2 does not do the way gRPC needs:

* A received GOAWAY moves h2's connection state machine to CLOSED, after which it refuses
  every further frame, including DATA for streams the GOAWAY explicitly lets finish
  (RFC 9113 §6.8). :class:`_H2` keeps the connection open and only reports the GOAWAY; the
  gRPC layer refuses new streams itself.
* h2 treats a stream over our MAX_CONCURRENT_STREAMS as a connection error; :class:`_H2`
  refuses just that stream (REFUSED_STREAM), as RFC 9113 §5.1.2 allows.
* h2 sends only what the peer's flow-control window allows and raises otherwise. gRPC messages
  of any size are queued per stream here (:class:`_Outbound`) and released as windows open;
  the I/O layer waits on :meth:`H2Base.pending` to apply back-pressure to the sender.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame

# hyperframe's DataFrame repr hex-encodes the whole payload and h2 builds that repr for every
# received frame even when logging is off, which halved large-message throughput. The repr is
# only ever used for debug logging, so a size summary loses nothing.
hyperframe.frame.DataFrame._body_repr = lambda self: f"<{len(self.data)} bytes>"  # type: ignore[method-assign,attr-defined]


class _H2(h2.connection.H2Connection):
    def _receive_goaway_frame(
        self, frame: hyperframe.frame.GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_headers_frame(
        self, frame: hyperframe.frame.HeadersFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            # RFC 9113 §5.1.2: a stream over our concurrency limit (a peer may open streams
            # before it sees our SETTINGS) is a stream error, not a connection error. The
            # header block is still decoded: HPACK state is shared by the whole connection.
            sid = frame.stream_id
            if self.config.client_side or sid % 2 == 0 or sid <= self.highest_inbound_stream_id:
                raise
            h2.connection._decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = sid
            self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
            refuse = hyperframe.frame.RstStreamFrame(sid)
            refuse.error_code = h2.errors.ErrorCodes.REFUSED_STREAM
            return [refuse], []


@dataclass(frozen=True, slots=True)
class Settings:
    """HTTP/2 settings and limits for one connection."""

    initial_window_size: int = 1 << 20
    connection_window_size: int = 16 << 20
    max_frame_size: int = 1 << 14
    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16 << 10

    def __post_init__(self) -> None:
        # RFC 9113 §6.5.2 limits; h2 would otherwise refuse them on every new connection.
        if not (1 << 14) <= self.max_frame_size <= (1 << 24) - 1:
            raise ValueError(f"max_frame_size must be 16384..16777215, not {self.max_frame_size}")
        for name in ("initial_window_size", "connection_window_size"):
            value = getattr(self, name)
            if not 0 < value <= (1 << 31) - 1:
                raise ValueError(f"{name} must be 1..2147483647, not {value}")


class _Outbound:
    """Bytes queued on one stream, and the trailers (or END_STREAM) that must follow them."""

    __slots__ = ("chunks", "end", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.end = False


class H2Base:
    """Common sans-IO machinery; see :class:`ServerConnection` and :class:`ClientConnection`."""

    def __init__(self, *, client_side: bool, settings: Settings) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
        )
        self.settings = settings
        self._h2 = _H2(config=config)
        self._out: dict[int, _Outbound] = {}
        self._extra = bytearray()
        # Inbound flow control: bytes received but not yet acknowledged, and bytes of complete
        # messages handed out but not yet consumed, per stream. Acknowledging only while the
        # consumer keeps up bounds what a fast sender can make us buffer.
        self._unacked: dict[int, int] = {}
        self._queued: dict[int, int] = {}
        self.goaway_received: int | None = None  # the peer's last_stream_id, once it sent GOAWAY
        self.closed = False

    # -- connection setup -------------------------------------------------------------------

    def initiate_connection(self) -> None:
        s = self.settings
        self._h2.local_settings = h2.settings.Settings(
            client=self._h2.config.client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # h2 derives its frame-size limit from local settings only when a change is ACKed;
        # settings installed wholesale (as above) must be applied by hand, or peers using
        # the larger frames we advertised get FRAME_SIZE_ERROR.
        self._h2.max_inbound_frame_size = s.max_frame_size
        self._h2.initiate_connection()
        extra = s.connection_window_size - 65535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        data = self._h2.data_to_send()
        if self._extra:
            data += self._extra
            self._extra.clear()
        return data

    # -- outbound flow control --------------------------------------------------------------

    def pending(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` that flow control has not let out yet."""
        out = self._out.get(stream_id)
        return out.size if out is not None else 0

    def _queue(self, stream_id: int, data: bytes | memoryview) -> None:
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outbound()
        if data:
            out.chunks.append(memoryview(data))
            out.size += len(data)
        self._flush(stream_id, out)

    def _queue_end(self, stream_id: int, trailers: list[tuple[bytes, bytes]] | None) -> None:
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outbound()
        out.trailers = trailers
        out.end = True
        self._flush(stream_id, out)

    def _flush(self, stream_id: int, out: _Outbound) -> None:
        h2c = self._h2
        while out.chunks:
            window = h2c.local_flow_control_window(stream_id)
            if window <= 0:
                return
            head = out.chunks[0]
            n = min(window, h2c.max_outbound_frame_size, len(head))
            if n == len(head):
                out.chunks.popleft()
                chunk = head
            else:
                chunk, out.chunks[0] = head[:n], head[n:]
            out.size -= n
            last = out.end and not out.chunks and out.trailers is None
            h2c.send_data(stream_id, chunk, end_stream=last)
            if last:
                del self._out[stream_id]
                self._sent_end(stream_id)
                return
        if out.end:
            del self._out[stream_id]
            if out.trailers is not None:
                h2c.send_headers(stream_id, out.trailers, end_stream=True)
            else:
                h2c.end_stream(stream_id)
            self._sent_end(stream_id)

    def _sent_end(self, stream_id: int) -> None:
        """END_STREAM went out on ``stream_id``; subclasses may close the stream fully."""

    def _flush_all(self) -> None:
        for stream_id, out in list(self._out.items()):
            try:
                self._flush(stream_id, out)
            except h2.exceptions.StreamClosedError:
                self._out.pop(stream_id, None)

    # -- connection-level verbs -------------------------------------------------------------

    def send_ping(self, opaque: bytes) -> None:
        self._h2.ping(opaque)

    def send_goaway(self, last_stream_id: int, error_code: int = 0, debug: bytes = b"") -> None:
        """GOAWAY without closing: streams up to ``last_stream_id`` may still finish."""
        frame = hyperframe.frame.GoAwayFrame(
            0, last_stream_id=last_stream_id, error_code=error_code, additional_data=debug
        )
        self._extra += frame.serialize()

    def close(self, error_code: int = 0, debug: bytes = b"") -> None:
        """Final GOAWAY; nothing more will be sent or received."""
        if not self.closed:
            self.closed = True
            if self._h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
                # h2 already sent its own GOAWAY (it does so when it raises ProtocolError).
                self._out.clear()
                return
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection(error_code=error_code, additional_data=debug or None)
            self._out.clear()

    def reset_stream(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self._stream_finished(stream_id)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, error_code=error_code)

    def _received(self, stream_id: int, flow_controlled: int, message_bytes: int) -> None:
        self._unacked[stream_id] = self._unacked.get(stream_id, 0) + flow_controlled
        self._queued[stream_id] = self._queued.get(stream_id, 0) + message_bytes
        self._maybe_acknowledge(stream_id)

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took ``size`` bytes of messages off ``stream_id``."""
        if stream_id in self._queued:
            self._queued[stream_id] -= size
            self._maybe_acknowledge(stream_id)

    def _maybe_acknowledge(self, stream_id: int) -> None:
        unacked = self._unacked.get(stream_id, 0)
        if unacked and self._queued.get(stream_id, 0) <= self.settings.initial_window_size:
            self._unacked[stream_id] = 0
            if not self.closed:
                self._h2.acknowledge_received_data(unacked, stream_id)

    def _stream_finished(self, stream_id: int) -> None:
        """Forget a stream entirely (reset, or both directions done)."""
        self._out.pop(stream_id, None)
        self._inbound_finished(stream_id)

    def _inbound_finished(self, stream_id: int) -> None:
        """No more data will arrive: unacknowledged bytes go back to the connection window."""
        self._queued.pop(stream_id, None)
        unacked = self._unacked.pop(stream_id, 0)
        if unacked and not self.closed:
            self._h2.acknowledge_received_data(unacked, stream_id)

    @property
    def highest_inbound_stream_id(self) -> int:
        return int(self._h2.highest_inbound_stream_id)
