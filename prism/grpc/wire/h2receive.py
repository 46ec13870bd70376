"""Receive fast paths, and where prism's HTTP/2 receiving differs from h2's on purpose.

Fast paths for the frames every RPC receives: a request's HEADERS (server), a response's
HEADERS and trailers (client), and DATA on an open stream. h2 runs each through its generic
stream state machine (a transition-table lookup keyed by two Enums, hashed in Python), builds
header-validation flags it then does not use (validation is off), and logs several times per
frame: ~40% of what receiving a unary RPC cost. :class:`ReceiveFastPaths` makes the same
state changes and returns the same events; anything else (priority, informational responses,
content-length, a stream in any other state, a connection not open) goes to h2's code, which
raises its errors as before. tests/grpc/wire/test_h2receive.py feeds the same bytes to
unmodified h2 and compares events, errors and stream state.

Differences on purpose (see :mod:`prism.grpc.wire.h2conn`): a received GOAWAY is only
reported (h2 would close the connection to every further frame), and a stream over our
MAX_CONCURRENT_STREAMS is refused alone (REFUSED_STREAM) instead of failing the connection.
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
import h2.utilities
import hyperframe.frame
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState
from h2.stream import StreamState

from prism.grpc.wire.h2streams import StreamTable

# Connection states in which receiving HEADERS or DATA leaves the state unchanged.
_OPEN = (ConnectionState.SERVER_OPEN, ConnectionState.CLIENT_OPEN)


class CompressionError(h2.exceptions.ProtocolError):
    """A header block that does not decode: the connection's HPACK state is lost.

    RFC 9113 §4.3: a decoding error MUST be treated as a connection error of type
    COMPRESSION_ERROR (h2 reports it as PROTOCOL_ERROR). h2 sends the GOAWAY with this code.
    """

    error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR


class ReceiveFastPaths(StreamTable):
    #: Streams refused for exceeding our MAX_CONCURRENT_STREAMS (REFUSED_STREAM), so far.
    refused_streams = 0

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
            try:
                h2.connection._decode_headers(self.decoder, frame.data)
            except h2.exceptions.DenialOfServiceError:
                raise  # over our MAX_HEADER_LIST_SIZE: ENHANCE_YOUR_CALM, as h2 has it
            except h2.exceptions.ProtocolError as exc:
                raise CompressionError(str(exc)) from exc
            self.highest_inbound_stream_id = sid
            self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
            self.refused_streams += 1
            refuse = hyperframe.frame.RstStreamFrame(sid)
            refuse.error_code = h2.errors.ErrorCodes.REFUSED_STREAM
            return [refuse], []
        try:  # (inline: a helper function would cost a call per request)
            headers = h2.connection._decode_headers(self.decoder, frame.data)
        except h2.exceptions.DenialOfServiceError:
            raise
        except h2.exceptions.ProtocolError as exc:
            raise CompressionError(str(exc)) from exc
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
