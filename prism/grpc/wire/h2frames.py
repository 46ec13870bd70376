"""HTTP/2 frames as bytes: their layout, and a frame reader that builds the common ones fast.

The layout constants are shared by the send fast paths (:mod:`prism.grpc.wire.h2send`), which
write frames without hyperframe. :class:`FrameReader` replaces h2's frame buffer on prism's
connections; it leans on the internals of h2's ``FrameBuffer`` (``_data``,
``_headers_buffer``, ``_validate_frame_length``) and builds hyperframe's frame classes without
their ``__init__``, so hyperframe and h2 are pinned in ``pyproject.toml`` and
tests/grpc/wire/test_h2frames.py compares the reader with h2's own on any sequence of frames.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.frame_buffer
import hyperframe.frame

# hyperframe's DataFrame repr hex-encodes the whole payload and h2 builds that repr for every
# received frame even when logging is off, which halved large-message throughput. The repr is
# only ever used for debug logging, so a size summary loses nothing. (prism's connections no
# longer build reprs at all; this keeps h2's own debug logging cheap should anyone call it.)
hyperframe.frame.DataFrame._body_repr = lambda self: f"<{len(self.data)} bytes>"  # type: ignore[method-assign,attr-defined]

# A frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id (RFC 9113 §4.1).
FRAME_HEADER = struct.Struct(">HBBBL")
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
# DATA payloads from this size on travel as views of the buffer they arrived in or were
# given in (no copy): received ones by FrameReader, sent ones by the send fast path.
ZERO_COPY = 1 << 15


class FrameReader(h2.frame_buffer.FrameBuffer):
    """h2's frame reader, with a shortcut for the frames every RPC brings.

    hyperframe builds each frame through three ``__init__`` levels, a :class:`Flags` set
    built from scratch, a header parse via memoryview and two copies of the body (~10% of a
    unary RPC). Plain DATA frames and complete HEADERS frames (no padding, no priority, no
    CONTINUATION pending) are built here directly: the same classes with the same attributes.
    Everything else, errors included, goes through h2's own code.

    Consecutive plain DATA frames of one stream that are all in the buffer come out as one
    DATA frame, each still counting against ``budget`` (frame boundaries mean nothing in
    HTTP/2; flow control, content length and END_STREAM add up the same). Peers send bulk
    data in 16 KiB frames (h2load, grpcio), and h2 plus our stream bookkeeping cost ~10 µs
    per frame: a 16 MiB message used to spend more time there than anywhere else.
    """

    #: Frames one pass (one ``receive_data`` call) may take out; what is left stays buffered
    #: for the next pass (``exhausted`` says so). A flood of small frames in one large read
    #: would otherwise keep the event loop busy for as long as it takes to process them all.
    budget = 1 << 62
    exhausted = False  # reset by whoever sets the budget

    def __next__(self) -> hyperframe.frame.Frame:
        if self.budget <= 0:
            self.exhausted = len(self._data) > 0
            raise StopIteration
        data = self._data
        if len(data) < 9:
            raise StopIteration  # as h2's reader does first: not even a frame header here
        if self._headers_buffer:
            return self._next_from_h2()
        kind = data[3]
        flags = data[4]
        if kind > HEADERS or not _FAST_FLAGS[kind][flags]:
            return self._next_from_h2()
        length = (data[0] << 16) | (data[1] << 8) | data[2]
        end = 9 + length
        if len(data) < end:
            raise StopIteration
        self.budget -= 1
        self._validate_frame_length(length)
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if not stream_id:
            return super().__next__()  # hyperframe's error
        frame_class, names = _FAST_FRAMES[kind]
        frame: Any = frame_class.__new__(frame_class)
        frame.stream_id = stream_id
        frame.pad_length = 0
        if kind == HEADERS:
            frame.depends_on = frame.stream_weight = 0
            frame.exclusive = False
            frame.data = bytes(memoryview(data)[9:end])  # the view is gone before the del
            del data[:end]
        elif length >= ZERO_COPY and len(data) - end <= ZERO_COPY:
            # A large DATA payload is handed out as a view of the buffer, which is given up
            # (what follows it is copied to a new one): one copy of the payload less.
            frame.data = memoryview(data)[9:end]
            self._data = bytearray(data[end:])
        else:
            pieces = [(9, end)]
            # Merge the DATA frames that follow; each counts against the budget, as it
            # does on the fast path (ServerConnection's take_data_frames).
            while not flags & END_STREAM and self.budget > 0:
                start = end
                if len(data) - start < 9 or data[start + 3] != DATA or data[start + 4] & 0x08:
                    break
                more = (data[start] << 16) | (data[start + 1] << 8) | data[start + 2]
                if more > self.max_frame_size or len(data) < start + 9 + more:
                    break  # an oversized frame is refused on its own, by the next call
                if int.from_bytes(data[start + 5 : start + 9], "big") & 0x7FFFFFFF != stream_id:
                    break
                end = start + 9 + more
                self.budget -= 1
                pieces.append((start + 9, end))
                flags |= data[start + 4] & END_STREAM
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

    def _next_from_h2(self) -> hyperframe.frame.Frame:
        # Only a frame taken counts against the budget, never a look at an incomplete one:
        # the fast path (take_data_frames) counts the same way, and where one pass ends
        # decides which bytes are acknowledged at its end (ServerConnection._withhold), so
        # the two paths must end their passes at the same frame.
        self.budget -= 1
        try:
            return super().__next__()
        except StopIteration:
            self.budget += 1
            raise


def _fast_frame_table(
    frame_class: type[hyperframe.frame.Frame],
) -> tuple[type[hyperframe.frame.Frame], list[frozenset[str]]]:
    defined = frame_class.defined_flags
    names = [frozenset(f.name for f in defined if bits & f.bit) for bits in range(256)]
    return frame_class, names


# Frame types FrameReader builds itself, and the flag bytes it takes: DATA without PADDED;
# HEADERS with END_HEADERS and without PADDED or PRIORITY.
_FAST_FRAMES = [
    _fast_frame_table(hyperframe.frame.DataFrame),
    _fast_frame_table(hyperframe.frame.HeadersFrame),
]
_FAST_FLAGS = [
    [not bits & 0x08 for bits in range(256)],
    [bits & 0x2C == 0x04 for bits in range(256)],
]
