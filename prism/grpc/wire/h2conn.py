"""The HTTP/2 layer shared by the server and client connections: h2 plus outbound buffering.

Things h2 does not do the way gRPC needs:

* A received GOAWAY moves h2's connection state machine to CLOSED, after which it refuses
  every further frame, including DATA for streams the GOAWAY explicitly lets finish
  (RFC 9113 §6.8). prism's h2 keeps the connection open and only reports the GOAWAY; the
  gRPC layer refuses new streams itself (:mod:`~prism.grpc.wire.h2receive`).
* h2 treats a stream over our MAX_CONCURRENT_STREAMS as a connection error; prism refuses
  just that stream (REFUSED_STREAM), as RFC 9113 §5.1.2 allows.
* h2 sends only what the peer's flow-control window allows and raises otherwise. gRPC messages
  of any size are queued per stream here (:class:`_Outbound`) and released as windows open;
  the I/O layer waits on :meth:`H2Base.pending` to apply back-pressure to the sender.
* h2's inbound header validation is off. It cost ~15% of a unary RPC, and it turned peers'
  harmless quirks into connection errors: a value with a surrounding space (grpcio sends
  ``grpc-message: missing `` unencoded) made h2 raise ProtocolError, and we would GOAWAY the
  whole connection. The checks gRPC needs are done per stream by the connections and by
  :func:`prism.grpc.wire.metadata.decode` (malformed names fail that stream only).

For speed (docs/benchmarks.md, "prism.grpc performance work"), the hot paths bypass parts of
h2, hpack and hyperframe, one module each:

* :mod:`~prism.grpc.wire.h2frames`: frame layout, and the frame reader (``FrameReader``);
* :mod:`~prism.grpc.wire.h2send`: HEADERS and DATA written as bytes, large payloads as views;
* :mod:`~prism.grpc.wire.h2receive`: HEADERS and DATA received without h2's state machine;
* :mod:`~prism.grpc.wire.h2streams`: counting open streams without scanning them all;
* :mod:`~prism.grpc.wire.hpack_codec`: HPACK.

They lean on internals of h2 4.4, hpack 4.x and hyperframe 6.x (pinned in pyproject.toml); the
tests compare each with the unmodified library's code (tests/grpc/wire/test_h2frames.py,
test_h2send.py, test_h2receive.py, test_hpack_codec.py), so run them on any upgrade.
"""

from __future__ import annotations

import collections
import contextlib

import h2.errors
import h2.exceptions
import hyperframe.frame

from prism.grpc.wire.h2frames import FrameReader
from prism.grpc.wire.h2receive import ReceiveFastPaths
from prism.grpc.wire.h2send import SendFastPaths
from prism.grpc.wire.h2settings import Settings, h2_config
from prism.grpc.wire.h2streams import MIN_CLOSED_STREAMS
from prism.grpc.wire.hpack_codec import Decoder, Encoder

__all__ = ["H2Base", "Settings", "h2_config", "new_h2"]


class _H2(SendFastPaths, ReceiveFastPaths):
    """h2's connection with prism's send and receive fast paths."""

    frames: FrameReader  # incoming_buffer, typed


class _Outbound:
    """Bytes queued on one stream, and the trailers (or END_STREAM) that must follow them.

    Each chunk is whole messages (prefix and payload; several when small ones were batched),
    or the prefix of a large one, or a part of its payload (``bodies`` holds those parts, in
    order: a message sent as :class:`~prism.grpc.wire.framing.Pieces` has two), or the rest
    of a chunk a frame took part of. ``started`` says whether the head chunk
    continues a message that has begun to go out: what :meth:`H2Base.discard_unsent` must keep
    so the peer never sees half a message.
    """

    __slots__ = ("bodies", "chunks", "end", "size", "started", "trailers")

    def __init__(self) -> None:
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.end = False
        self.started = False
        self.bodies: collections.deque[memoryview] | None = None


def new_h2(client_side: bool, max_header_list_size: int | None = None) -> _H2:
    """An h2 connection with prism's fast paths, frame reader and HPACK coding.

    ``max_header_list_size``: the largest header list the decoder accepts (what we advertise
    in SETTINGS_MAX_HEADER_LIST_SIZE); None keeps h2's default (64 KiB).
    """
    conn = _H2(config=h2_config(client_side))
    conn.incoming_buffer = conn.frames = FrameReader(server=not client_side)
    decoder = Decoder()
    decoder.max_header_list_size = max_header_list_size or conn.decoder.max_header_list_size
    conn.decoder = decoder
    conn.encoder = Encoder()
    return conn


class H2Base:
    """Common sans-IO machinery; see :class:`ServerConnection` and :class:`ClientConnection`."""

    def __init__(self, *, client_side: bool, settings: Settings) -> None:
        self.settings = settings
        # h2 applies a MAX_HEADER_LIST_SIZE to its decoder only when a change is ACKed, not
        # for settings installed wholesale (initiate_connection): the limit is set here.
        self._h2 = new_h2(client_side, settings.max_header_list_size)
        self._h2.keep_closed_streams(max(MIN_CLOSED_STREAMS, 2 * settings.max_concurrent_streams))
        self._out: dict[int, _Outbound] = {}
        self._extra = bytearray()
        # Inbound flow control, per stream: bytes of complete messages handed out but not yet
        # consumed, and how many of their flow-controlled bytes are withheld until they are.
        # The peer's window reopens only as the consumer takes messages, so what a fast sender
        # can make us buffer stays within one window (and messages larger than the window,
        # whose earlier parts are acknowledged as they come, or they could never complete).
        self._queued: dict[int, int] = {}
        self._held: dict[int, int] = {}
        # Per stream, during a read: [flow-controlled bytes, message bytes] received in it.
        self._in_read: dict[int, list[int]] = {}
        # While a receive_data call runs (the server's): bytes to give back per stream once
        # the whole read is processed (streams finished or gone, parts of messages not yet
        # complete). One acknowledgement per stream per read makes the WINDOW_UPDATEs
        # independent of how the read's frames were grouped (h2's merged DATA frames or the
        # fast path's runs) and costs one call, not one per frame. None: acknowledge at once.
        self._acks: dict[int, int] | None = None
        self.goaway_received: int | None = None  # the peer's last_stream_id, once it sent GOAWAY
        self.closed = False

    # -- connection setup -------------------------------------------------------------------

    def initiate_connection(self) -> None:
        s = self.settings
        self._h2.local_settings = s.local_settings(self._h2.config.client_side)
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

    # -- inbound flow control ---------------------------------------------------------------

    def receive_window(self, stream_id: int) -> int:
        """What the peer may still send on ``stream_id`` before our next WINDOW_UPDATE: the
        smaller of the stream's window and the connection's (0 for a stream that is gone)."""
        stream = self._h2.streams.get(stream_id)
        if stream is None:
            return 0
        window = stream._inbound_window_manager.current_window_size
        return min(window, self._h2._inbound_flow_control_window_manager.current_window_size)

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
                    # Another part of the same payload may follow (a prefix never is a body).
                    out.started = bool(bodies) and bool(out.chunks) and out.chunks[0] is bodies[0]
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
            if bodies:
                # The rest of the message begun: its payload's parts (after a prefix a frame
                # took part of, or after the part being sent).
                parts = {id(body) for body in bodies}
                while keep < len(chunks) and id(chunks[keep]) in parts:
                    keep += 1
        kept = [chunks[i] for i in range(keep)]
        if keep == 1 and not (bodies and chunks[0] is bodies[0]):
            # The head holds whole messages (several, when a streaming handler's small ones
            # were batched into one frame's worth): keep only the rest of the one begun.
            kept = [rest] if (rest := _rest_of_message(kept[0])) else []
            out.started = bool(kept)
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
        """``flow_controlled`` bytes arrived on ``stream_id``, completing messages of
        ``message_bytes`` (5 + length each) for the consumer. During a read (the server's
        receive_data) the stream's sums are settled once, at its end (see ``_acks``)."""
        if self._acks is None:
            self._withhold(stream_id, flow_controlled, message_bytes)
            return
        read = self._in_read.get(stream_id)
        if read is None:
            self._in_read[stream_id] = [flow_controlled, message_bytes]
            if stream_id not in self._acks:
                self._acks[stream_id] = 0
        else:
            read[0] += flow_controlled
            read[1] += message_bytes

    def _withhold(self, stream_id: int, flow_controlled: int, message_bytes: int) -> None:
        """While the stream has messages the consumer has not taken (these ``message_bytes``
        among them), ``flow_controlled`` is withheld until :meth:`consumed` reports them
        taken; otherwise (the beginning of a message not yet complete, padding) it is
        acknowledged now, so a message larger than the window can complete. What a fast
        sender can make us buffer is then one window and one message, however large the
        messages: a message larger than the window no longer reopens it for the next ones.
        Once the consumer has taken every message, every byte has been acknowledged: a
        sender cannot stall on a window we keep shut while nothing is left to consume."""
        queued = self._queued.get(stream_id, 0) + message_bytes
        if message_bytes:
            self._queued[stream_id] = queued
        if queued > 0:
            if flow_controlled:
                self._held[stream_id] = self._held.get(stream_id, 0) + flow_controlled
        elif flow_controlled:
            self._give_back(stream_id, flow_controlled)

    def _give_back(self, stream_id: int, size: int) -> None:
        """Acknowledge ``size`` bytes nobody will consume (a stream finished or gone, or the
        part of a message still incomplete)."""
        acks = self._acks
        if acks is not None:
            acks[stream_id] = acks.get(stream_id, 0) + size
        elif not self.closed:
            self._h2.acknowledge_data(size, stream_id)

    def _acknowledge_read(self) -> None:
        """End of a read: settle each stream's received bytes (:meth:`_withhold`) and
        acknowledge what is given back, in the order the streams first appeared in it."""
        acks = self._acks
        in_read = self._in_read
        if in_read:
            for stream_id, (flow, message_bytes) in in_read.items():
                self._withhold(stream_id, flow, message_bytes)  # adds to acks[stream_id]
            in_read.clear()
        self._acks = None
        if not acks or self.closed:
            return
        for stream_id, give in acks.items():
            if give:
                self._h2.acknowledge_data(give, stream_id)

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took ``size`` bytes of messages off ``stream_id``: the bytes
        withheld for them are acknowledged (the peer's window reopens by as much)."""
        queued = self._queued.get(stream_id)
        if queued is None:
            return
        queued -= size
        self._queued[stream_id] = queued
        held = self._held.get(stream_id, 0)
        if held:
            # Everything once the consumer has caught up (bytes of a message still coming
            # were held behind the ones it had not taken).
            release = held if queued <= 0 or size >= held else size
            self._held[stream_id] = held - release
            if not self.closed:
                self._h2.acknowledge_data(release, stream_id)

    def _stream_finished(self, stream_id: int) -> None:
        """Forget a stream entirely (reset, or both directions done)."""
        self._out.pop(stream_id, None)
        self._inbound_finished(stream_id)

    def _inbound_finished(self, stream_id: int) -> None:
        """No more data will arrive: unacknowledged bytes go back to the connection window."""
        self._queued.pop(stream_id, None)
        held = self._held.pop(stream_id, 0)
        read = self._in_read.pop(stream_id, None) if self._in_read else None
        if read is not None:
            held += read[0]
        if held:
            self._give_back(stream_id, held)

    @property
    def highest_inbound_stream_id(self) -> int:
        return int(self._h2.highest_inbound_stream_id)


def _rest_of_message(head: memoryview) -> memoryview:
    """``head``, the unsent tail of a chunk of whole gRPC messages (its ``obj``), cut at the end
    of the message the sent part stopped in (empty when it stopped between two)."""
    whole = head.obj
    if not isinstance(whole, bytes | bytearray) or len(whole) < len(head):
        return head  # not a chunk queued whole: keep it all rather than guess
    sent = len(whole) - len(head)
    end = 0
    while end < sent:
        end += 5 + int.from_bytes(whole[end + 1 : end + 5], "big")
    return head[: end - sent]
