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
* h2's inbound header validation is off. It cost ~15% of a unary RPC, and it turned peers'
  harmless quirks into connection errors: a value with a surrounding space (grpcio sends
  ``grpc-message: missing `` unencoded) made h2 raise ProtocolError, and we would GOAWAY the
  whole connection. The checks gRPC needs are done per stream by the connections and by
  :func:`prism.grpc.wire.metadata.decode` (malformed names fail that stream only).

For speed (docs/benchmarks.md, "prism.grpc performance work"), the hot paths bypass parts of
h2, hpack and hyperframe: frames are read (:class:`_FrameBuffer`) and written
(:meth:`_H2.send_headers`, :meth:`_H2.send_data`) here, HPACK is ``hpack_codec``, and large
DATA payloads travel as views (:meth:`H2Base.output`). They lean on h2 4.4's internals (stream
state machines, ``_data_to_send``, the frame buffer's fields): the tests compare them with h2's
own code (tests/grpc/wire/test_frame_buffer.py, test_hpack_codec.py), so run them on any h2
upgrade.
"""

from __future__ import annotations

import collections
import contextlib
import struct
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
import h2.utilities
import hyperframe.frame
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState
from h2.stream import StreamInputs, StreamState

from prism.grpc.wire.hpack_codec import Decoder, Encoder

# hyperframe's DataFrame repr hex-encodes the whole payload and h2 builds that repr for every
# received frame even when logging is off, which halved large-message throughput. The repr is
# only ever used for debug logging, so a size summary loses nothing. (_H2 no longer builds
# reprs at all; this keeps h2's own debug logging cheap should anyone call it.)
hyperframe.frame.DataFrame._body_repr = lambda self: f"<{len(self.data)} bytes>"  # type: ignore[method-assign,attr-defined]


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame reader, with a shortcut for the frames every RPC brings.

    hyperframe builds each frame through three ``__init__`` levels, a :class:`Flags` set
    built from scratch, a header parse via memoryview and two copies of the body (~10% of a
    unary RPC). Plain DATA frames and complete HEADERS frames (no padding, no priority, no
    CONTINUATION pending) are built here directly: the same classes with the same attributes.
    Everything else, errors included, goes through h2's own code.

    Consecutive plain DATA frames of one stream that are all in the buffer come out as one
    DATA frame (frame boundaries mean nothing in HTTP/2; flow control, content length and
    END_STREAM add up the same). Peers send bulk data in 16 KiB frames (h2load, grpcio), and
    h2 plus our stream bookkeeping cost ~10 µs per frame: a 16 MiB message used to spend more
    time there than anywhere else.
    """

    def __next__(self) -> hyperframe.frame.Frame:
        data = self._data
        if len(data) < 9 or self._headers_buffer:
            return super().__next__()
        kind = data[3]
        flags = data[4]
        if kind > _HEADERS or not _FAST_FLAGS[kind][flags]:
            return super().__next__()
        length = (data[0] << 16) | (data[1] << 8) | data[2]
        end = 9 + length
        if len(data) < end:
            raise StopIteration
        self._validate_frame_length(length)
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if not stream_id:
            return super().__next__()  # hyperframe's error
        frame_class, names = _FAST_FRAMES[kind]
        frame: Any = frame_class.__new__(frame_class)
        frame.stream_id = stream_id
        frame.pad_length = 0
        if kind == _HEADERS:
            frame.depends_on = frame.stream_weight = 0
            frame.exclusive = False
            frame.data = bytes(memoryview(data)[9:end])  # the view is gone before the del
            del data[:end]
        elif length >= _ZERO_COPY and len(data) - end <= _ZERO_COPY:
            # A large DATA payload is handed out as a view of the buffer, which is given up
            # (what follows it is copied to a new one): one copy of the payload less.
            frame.data = memoryview(data)[9:end]
            self._data = bytearray(data[end:])
        else:
            pieces = [(9, end)]
            while not flags & _END_STREAM:  # merge the DATA frames that follow
                start = end
                if len(data) - start < 9 or data[start + 3] != _DATA or data[start + 4] & 0x08:
                    break
                more = (data[start] << 16) | (data[start + 1] << 8) | data[start + 2]
                if more > self.max_frame_size or len(data) < start + 9 + more:
                    break  # an oversized frame is refused on its own, by the next call
                if int.from_bytes(data[start + 5 : start + 9], "big") & 0x7FFFFFFF != stream_id:
                    break
                end = start + 9 + more
                pieces.append((start + 9, end))
                flags |= data[start + 4] & _END_STREAM
            view = memoryview(data)
            if len(pieces) == 1:
                frame.data = bytes(view[9:end])
            else:
                frame.data = b"".join([view[a:b] for a, b in pieces])
            view.release()
            length = len(frame.data)
            del data[:end]
        # A frozenset of flag names instead of a Flags object: h2 only tests membership
        # ("END_STREAM" in frame.flags) on frames it receives.
        frame.flags = names[flags]
        frame.body_len = length
        built: hyperframe.frame.Frame = frame
        return built


def _fast_frame_table(
    frame_class: type[hyperframe.frame.Frame],
) -> tuple[type[hyperframe.frame.Frame], list[frozenset[str]]]:
    defined = frame_class.defined_flags
    names = [frozenset(f.name for f in defined if bits & f.bit) for bits in range(256)]
    return frame_class, names


# A frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id (RFC 9113 §4.1).
_FRAME_HEADER = struct.Struct(">HBBBL")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
# DATA payloads from this size on are sent from the sender's own buffer (no copy).
_ZERO_COPY = 1 << 15
# Frame types _FrameBuffer builds itself, and the flag bytes it takes: DATA without PADDED;
# HEADERS with END_HEADERS and without PADDED or PRIORITY.
_FAST_FRAMES = [
    _fast_frame_table(hyperframe.frame.DataFrame),
    _fast_frame_table(hyperframe.frame.HeadersFrame),
]
_FAST_FLAGS = [
    [not bits & 0x08 for bits in range(256)],
    [bits & 0x2C == 0x04 for bits in range(256)],
]
# Connection states in which sending HEADERS or DATA leaves the state unchanged.
_OPEN = (ConnectionState.SERVER_OPEN, ConnectionState.CLIENT_OPEN)


class _H2(h2.connection.H2Connection):
    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._segments = []  # output queued before _data_to_send (see send_data)

    # Fast paths for the frames every RPC sends. h2's send_headers/send_data build hyperframe
    # Frame objects (Flags sets, Padding/Priority mixins), re-encode and re-check headers, copy
    # memoryviews and serialize: ~20% of a unary RPC. These do the same state transitions and
    # flow-control accounting and write the frame bytes directly. Anything unusual (priority,
    # padding, 1xx responses, a connection that is not open yet or any more) goes to h2's code.

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        stream = self.streams.get(stream_id)
        client = self.config.client_side
        if (
            (stream is None and not client)
            or self.state_machine.state not in _OPEN
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or not isinstance(headers, list)
            or not headers
            or (headers[0][0] == b":status" and headers[0][1][:1] == b"1")
        ):
            # Priority, 1xx informational responses, odd header lists, the first request.
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        if stream is None:  # a new request: what h2 checks and records for one
            if not self.room_for_outbound():
                raise h2.exceptions.TooManyStreamsError(
                    f"Max outbound streams is {self.remote_settings.max_concurrent_streams}"
                )
            stream = self._begin_new_stream(stream_id, AllowedStreamIDs(client))
            stream._authority = h2.utilities.authority_from_headers(headers)
            stream.request_method = h2.utilities.extract_method_header(headers)
        # The stream transition comes before encoding: HPACK state changes irreversibly.
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        if machine.trailers_sent and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
        block = self.encoder.encode(headers)
        flags = 0
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = _END_STREAM
        size = len(block)
        limit = self.max_outbound_frame_size
        out = self._data_to_send
        if size <= limit:
            out += _FRAME_HEADER.pack(
                size >> 8, size & 0xFF, _HEADERS, flags | _END_HEADERS, stream_id
            )
            out += block
            return
        out += _FRAME_HEADER.pack(limit >> 8, limit & 0xFF, _HEADERS, flags, stream_id)
        out += block[:limit]
        for start in range(limit, size, limit):
            chunk = block[start : start + limit]
            n = len(chunk)
            last = _END_HEADERS if start + limit >= size else 0
            out += _FRAME_HEADER.pack(n >> 8, n & 0xFF, _CONTINUATION, last, stream_id)
            out += chunk

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or pad_length is not None
            or self.state_machine.state not in _OPEN
            or size > self.max_outbound_frame_size
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
        ):
            super().send_data(stream_id, data, end_stream, pad_length)  # raises as h2 does
            return
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        flags = 0
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = _END_STREAM
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += _FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA, flags, stream_id)
        if size < _ZERO_COPY:
            out += data
        else:
            # A large payload is sent from the caller's buffer instead of being copied into
            # h2's output buffer (and from there into the bytes data_to_send returns).
            self._segments += (out, data)
            self._data_to_send = bytearray()

    _segments: list[bytes | bytearray | memoryview]

    def take_output(self) -> list[bytes | bytearray | memoryview]:
        """Everything queued for sending, in order, as buffers; the caller owns them."""
        out = self._segments
        self._segments = []
        if self._data_to_send:
            out.append(self._data_to_send)
            self._data_to_send = bytearray()
        return out

    def clear_outbound_data_buffer(self) -> None:
        self._segments = []
        super().clear_outbound_data_buffer()

    def data_to_send(self, amount: int | None = None) -> bytes:
        if self._segments:
            self._data_to_send[:0] = b"".join(self._segments)
            self._segments = []
        return super().data_to_send(amount)

    def _receive_frame(self, frame: hyperframe.frame.Frame) -> list[h2.events.Event]:
        # h2's own version starts with ``logger.trace("Received frame: %s", repr(frame))``: a
        # repr built eagerly for every frame (~2% of a unary RPC) and then thrown away. The
        # rest is the same as h2 4.x's.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by RST_STREAM: answer with RST_STREAM; otherwise a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events  # type: ignore[no-any-return]

    # h2 counts open streams by scanning every stream it holds (and forgets closed ones only
    # during that scan) whenever a peer opens a stream: O(streams) per RPC. Whether one more
    # stream fits under a limit needs no count while fewer streams than the limit are held at
    # all; a real scan (which also forgets closed streams) runs only near the limit or once
    # the streams held have doubled since the last scan.
    _prune_at = 64

    def room_for_inbound(self) -> bool:
        """Whether the peer may open one more stream (our MAX_CONCURRENT_STREAMS)."""
        return self._room(
            int(not self.config.client_side), self.local_settings.max_concurrent_streams
        )

    def room_for_outbound(self) -> bool:
        """Whether we may open one more stream (the peer's MAX_CONCURRENT_STREAMS)."""
        return self._room(int(self.config.client_side), self.remote_settings.max_concurrent_streams)

    def _room(self, remainder: int, limit: int) -> bool:
        held = len(self.streams)
        if held < limit and held < self._prune_at:
            return True  # held >= open streams: the open count is below the limit too
        count = self._open_streams(remainder)
        self._prune_at = max(64, 2 * len(self.streams))
        return count < limit

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
        # h2's version, with the open-stream check above, and RFC 9113 §5.1.2: a stream over
        # our concurrency limit (a peer may open streams before it sees our SETTINGS) is a
        # stream error (REFUSED_STREAM), not a connection error.
        sid = frame.stream_id
        client = self.config.client_side
        if sid not in self.streams and not self.room_for_inbound():
            if client or sid % 2 == 0 or sid <= self.highest_inbound_stream_id:
                raise h2.exceptions.TooManyStreamsError(
                    f"Max inbound streams is {self.local_settings.max_concurrent_streams}"
                )
            # The header block is still decoded: HPACK state is shared by the connection.
            h2.connection._decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = sid
            self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
            refuse = hyperframe.frame.RstStreamFrame(sid)
            refuse.error_code = h2.errors.ErrorCodes.REFUSED_STREAM
            return [refuse], []
        headers = h2.connection._decode_headers(self.decoder, frame.data)
        fast = self._fast_headers(sid, headers, frame)
        if fast is not None:
            return [], fast
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(sid, AllowedStreamIDs(not client))
        frames, stream_events = stream.receive_headers(
            headers, "END_STREAM" in frame.flags, self.config.header_encoding
        )
        if "PRIORITY" in frame.flags:
            _, priority_events = self._receive_priority_frame(frame)
            stream_events[0].priority_updated = priority_events[0]  # type: ignore[attr-defined]
            stream_events.extend(priority_events)
        return frames, events + stream_events

    # Fast paths for the frames every RPC receives: a request's HEADERS (server), a response's
    # HEADERS and trailers (client), and DATA on an open stream. h2 runs each through its
    # generic stream state machine (a transition-table lookup keyed by two Enums, hashed in
    # Python), builds header-validation flags it then does not use (validation is off), and
    # logs several times per frame: ~40% of what receiving a unary RPC cost. These make the
    # same state changes and return the same events; anything else (priority, informational
    # responses, content-length, a stream in any other state, a connection not open) goes to
    # h2's code, which raises its errors as before.

    def _fast_headers(
        self, sid: int, headers: Any, frame: hyperframe.frame.HeadersFrame
    ) -> list[h2.events.Event] | None:
        flags = frame.flags
        if (
            self.state_machine.state not in _OPEN
            or "PRIORITY" in flags
            # h2's RECV_INFORMATIONAL_HEADERS (or its error, on a request):
            or h2.utilities.is_informational_response(headers)
        ):
            return None
        for name, _ in headers:
            if name == b"content-length":
                return None
        end = "END_STREAM" in flags
        stream = self.streams.get(sid)
        event: h2.events.RequestReceived | h2.events.ResponseReceived | h2.events.TrailersReceived
        if stream is None:
            if self.config.client_side:
                return None
            stream = self._begin_new_stream(sid, AllowedStreamIDs.ODD)  # checks the id
            machine = stream.state_machine
            machine.state = StreamState.OPEN  # request_received
            machine.client = False
            machine.headers_received = True
            event = h2.events.RequestReceived(stream_id=sid)
        else:
            machine = stream.state_machine
            state = machine.state
            if machine.client is not True or (
                state is not StreamState.OPEN and state is not StreamState.HALF_CLOSED_LOCAL
            ):
                return None
            if not machine.headers_received:  # response_received
                machine.headers_received = True
                event = h2.events.ResponseReceived(stream_id=sid)
            elif machine.trailers_received or not end:
                return None  # h2 raises ProtocolError for these
            else:
                machine.trailers_received = True
                event = h2.events.TrailersReceived(stream_id=sid)
        event.headers = headers
        events: list[h2.events.Event] = [event]
        if end:
            ended = self._recv_end_stream(machine, sid)
            event.stream_ended = ended
            events.append(ended)
        return events

    @staticmethod
    def _recv_end_stream(
        machine: h2.stream.H2StreamStateMachine, sid: int
    ) -> h2.events.StreamEnded:
        if machine.state is StreamState.OPEN:
            machine.state = StreamState.HALF_CLOSED_REMOTE  # stream_half_closed
        else:  # HALF_CLOSED_LOCAL: stream_ended
            machine.state = StreamState.CLOSED
            machine.stream_closed_by = h2.stream.StreamClosedBy.RECV_END_STREAM
        return h2.events.StreamEnded(stream_id=sid)

    def _receive_data_frame(
        self, frame: hyperframe.frame.DataFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        stream = self.streams.get(sid)
        flags = frame.flags
        if stream is None or self.state_machine.state not in _OPEN or "PADDED" in flags:
            return super()._receive_data_frame(frame)
        machine = stream.state_machine
        state = machine.state
        if (
            (state is not StreamState.OPEN and state is not StreamState.HALF_CLOSED_LOCAL)
            or not machine.headers_received
            or stream._expected_content_length is not None
        ):
            return super()._receive_data_frame(frame)
        data = frame.data
        size = len(data)
        # Connection window first, as h2 does: overrunning either is a FlowControlError.
        self._inbound_flow_control_window_manager.window_consumed(size)
        stream._inbound_window_manager.window_consumed(size)
        stream._actual_content_length += size
        event = h2.events.DataReceived(stream_id=sid)
        event.data = data
        event.flow_controlled_length = size
        events: list[h2.events.Event] = [event]
        if "END_STREAM" in flags:
            ended = self._recv_end_stream(machine, sid)
            event.stream_ended = ended
            events.append(ended)
        return [], events


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
    """Bytes queued on one stream, and the trailers (or END_STREAM) that must follow them.

    Each chunk is one whole message (prefix and payload), or the prefix or the payload of a
    large one (``bodies`` holds those payloads, in order), or the rest of a chunk a frame took
    part of. ``started`` says whether the head chunk continues a message that has begun to go
    out: what :meth:`H2Base.discard_unsent` must keep so the peer never sees half a message.
    """

    __slots__ = ("bodies", "chunks", "end", "size", "started", "trailers")

    def __init__(self) -> None:
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.end = False
        self.started = False
        self.bodies: collections.deque[memoryview] | None = None


def h2_config(client_side: bool) -> h2.config.H2Configuration:
    """How prism configures h2: bytes headers, no validation or normalization (module doc)."""
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


def new_h2(client_side: bool) -> _H2:
    """An h2 connection with prism's fast paths, frame reader and HPACK coding."""
    conn = _H2(config=h2_config(client_side))
    conn.incoming_buffer = _FrameBuffer(server=not client_side)
    decoder = Decoder()
    decoder.max_header_list_size = conn.decoder.max_header_list_size
    conn.decoder = decoder
    conn.encoder = Encoder()
    return conn


class H2Base:
    """Common sans-IO machinery; see :class:`ServerConnection` and :class:`ClientConnection`."""

    def __init__(self, *, client_side: bool, settings: Settings) -> None:
        self.settings = settings
        self._h2 = new_h2(client_side)
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

    def wants_write(self) -> bool:
        """Whether the I/O layer has anything to do: bytes to send, or a closed connection."""
        h2c = self._h2
        return bool(h2c._data_to_send or h2c._segments or self._extra or self.closed)

    def output(self) -> list[bytes | bytearray | memoryview]:
        """What :meth:`data_to_send` would return, as buffers to send in order, without
        joining them: large DATA payloads stay in the sender's buffers."""
        out = self._h2.take_output()
        if self._extra:
            out.append(bytes(self._extra))
            self._extra.clear()
        return out

    # -- outbound flow control --------------------------------------------------------------

    def pending(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` that flow control has not let out yet."""
        out = self._out.get(stream_id)
        return out.size if out is not None else 0

    def _queue(
        self, stream_id: int, data: bytes | memoryview, *, end: bool = False, body: bool = False
    ) -> None:
        """Queue ``data``; with ``end``, END_STREAM follows it (on its last DATA frame). ``body``:
        ``data`` is the payload of the message whose prefix was queued just before it."""
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outbound()
        if data:
            view = memoryview(data)
            if body:
                if out.bodies is None:
                    out.bodies = collections.deque()
                out.bodies.append(view)
                if not out.chunks:
                    out.started = True  # its prefix has gone out already
            out.chunks.append(view)
            out.size += len(view)
        if end:
            out.trailers = None
            out.end = True
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
            bodies = out.bodies
            if n == len(head):
                out.chunks.popleft()
                chunk = head
                if not bodies:
                    out.started = False
                elif head is bodies[0]:
                    bodies.popleft()
                    out.started = False
                else:  # after a large message's prefix, its payload has begun
                    out.started = bool(out.chunks) and out.chunks[0] is bodies[0]
            else:
                chunk, out.chunks[0] = head[:n], head[n:]
                out.started = True
                if bodies and head is bodies[0]:
                    bodies[0] = out.chunks[0]
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

    def discard_unsent(self, stream_id: int) -> int:
        """Drop the messages queued on ``stream_id`` that flow control has held back, except
        the rest of one that has begun to go out (the peer must never see half a message);
        returns how many bytes were dropped. Trailers or END_STREAM queued behind them stay,
        and follow what is kept."""
        out = self._out.get(stream_id)
        if out is None or not out.chunks:
            return 0
        chunks, bodies = out.chunks, out.bodies
        keep = 0
        if out.started:
            keep = 1
            if bodies and len(chunks) > 1 and chunks[0] is not bodies[0] and chunks[1] is bodies[0]:
                keep = 2  # a frame took part of a large message's prefix: keep its payload too
        kept = [chunks[i] for i in range(keep)]
        size = sum(len(chunk) for chunk in kept)
        dropped = out.size - size
        out.chunks = collections.deque(kept)
        out.size = size
        if bodies:
            out.bodies = collections.deque(b for b in bodies if any(b is c for c in kept))
        self._flush(stream_id, out)
        return dropped

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
