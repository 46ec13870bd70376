"""Send fast paths: HEADERS and DATA frames written as bytes, with h2's bookkeeping.

h2's ``send_headers``/``send_data`` build hyperframe Frame objects (Flags sets,
Padding/Priority mixins), re-encode and re-check headers, copy memoryviews and serialize: ~20%
of a unary RPC. :class:`SendFastPaths` makes the same stream-state transitions and
flow-control accounting and writes the frame bytes directly; anything unusual (priority,
padding, 1xx responses, a connection that is not open yet or any more) goes to h2's code.
DATA payloads of 4 KiB and more are not copied: they stay in the caller's buffer
(:meth:`take_output`).

It uses h2 4.4's internals (``_data_to_send``, ``_begin_new_stream``, the stream state
machine's ``process_input``); tests/grpc/wire/test_h2send.py compares what it writes and the
state it leaves with unmodified h2's, for any sequence of sends.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import h2.utilities
from h2.connection import AllowedStreamIDs, ConnectionState
from h2.stream import StreamInputs

from prism.grpc.wire.h2frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
)
from prism.grpc.wire.h2streams import StreamTable

#: DATA payloads from this size on are sent as views of the caller's buffer (see send_data);
#: smaller ones are copied behind their frame header (one buffer for many small frames).
#: A view costs a list entry and a fresh output buffer, about what copying 2 KiB costs.
SEND_VIEW = 1 << 12

# Connection states in which sending HEADERS or DATA leaves the state unchanged.
_OPEN = (ConnectionState.SERVER_OPEN, ConnectionState.CLIENT_OPEN)


class SendFastPaths(StreamTable):
    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._segments = []  # output queued before _data_to_send (see send_data)

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
            flags = END_STREAM
        size = len(block)
        limit = self.max_outbound_frame_size
        out = self._data_to_send
        if size <= limit:
            out += FRAME_HEADER.pack(
                size >> 8, size & 0xFF, HEADERS, flags | END_HEADERS, stream_id
            )
            out += block
            return
        out += FRAME_HEADER.pack(limit >> 8, limit & 0xFF, HEADERS, flags, stream_id)
        out += block[:limit]
        for start in range(limit, size, limit):
            chunk = block[start : start + limit]
            n = len(chunk)
            last = END_HEADERS if start + limit >= size else 0
            out += FRAME_HEADER.pack(n >> 8, n & 0xFF, CONTINUATION, last, stream_id)
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
            flags = END_STREAM
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += FRAME_HEADER.pack(size >> 8, size & 0xFF, DATA, flags, stream_id)
        if size < SEND_VIEW:
            out += data
        else:
            # A payload of a frame's size is sent from the caller's buffer instead of being
            # copied into h2's output buffer (and from there into the bytes data_to_send
            # returns): a large message goes out in 16 KiB frames, each a view of it.
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
