"""Length-prefixed message framing: a 1-byte compressed flag, a 4-byte big-endian length."""

from __future__ import annotations

import struct

from prism.grpc.wire.compression import IDENTITY, decompress
from prism.grpc.wire.status import Internal, ResourceExhausted

HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size


def frame_header(length: int, compressed: bool = False) -> bytes:
    return HEADER.pack(1 if compressed else 0, length)


class Pieces:
    """One message given as buffers sent one after the other without being joined: ``head``
    (an envelope's fields), ``body`` (a large payload it carries as it came: ``raw_params``,
    ``raw_result``) and an optional ``tail`` (fields added behind it, such as the trace
    context the proxy appends), so the payload is never copied to put fields around it.

    Sends take it wherever they take a message's bytes (``prism.grpc``'s calls, with the
    ``bytes`` message type): ``len()`` is the message's size, ``bytes()`` joins it (what a
    compressed or small message needs anyway). ``body`` must not change until it is sent.
    """

    __slots__ = ("body", "head", "tail")

    def __init__(self, head: bytes, body: bytes | memoryview, tail: bytes = b"") -> None:
        self.head = head
        self.body = body
        self.tail = tail

    def __len__(self) -> int:
        return len(self.head) + len(self.body) + len(self.tail)

    def __bytes__(self) -> bytes:
        return b"".join((self.head, self.body, self.tail))

    def __repr__(self) -> str:
        return f"Pieces({len(self.head)} + {len(self.body)} + {len(self.tail)} bytes)"


def encode_message(data: bytes, compressed: bool = False) -> bytes:
    """One framed message. Large payloads are better sent as header + data to avoid a copy."""
    return HEADER.pack(1 if compressed else 0, len(data)) + data


class MessageDecoder:
    """Reassembles framed messages from DATA frame payloads of any size.

    ``max_message_size`` is enforced from the header, before the body is buffered, so an
    oversized message costs nothing; a compressed message is held to it twice, as received
    and as it inflates (never inflated past it). ``encoding`` is the stream's
    ``grpc-encoding``: messages with the compressed flag are inflated with it, and a set flag
    on a stream whose encoding is ``identity`` is a protocol error (INTERNAL).
    """

    __slots__ = ("_buffer", "_chunk_flag", "_chunks", "_max", "_need", "encoding")

    def __init__(self, max_message_size: int, encoding: str = IDENTITY) -> None:
        self._max = max_message_size
        self.encoding = encoding
        self._chunk_flag = 0
        self._buffer = bytearray()
        # While inside a large body: chunks collected so far and how many bytes are missing.
        self._chunks: list[bytes | memoryview] = []
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message (headers included)."""
        if self._chunks:
            # Inside a body: its header was consumed from the buffer but is still held back.
            return HEADER_SIZE + sum(len(c) for c in self._chunks)
        return len(self._buffer)

    @property
    def partial(self) -> bool:
        """True when a message has started but not finished (the stream ended mid-message)."""
        return bool(self._buffer) or bool(self._chunks)

    def receive_data(self, data: bytes | memoryview) -> list[bytes]:
        """Feed bytes; returns every message completed by them, in order.

        ``data`` may be a view of a buffer nobody changes later (large DATA payloads are):
        parts of a large message are kept as views until the message is complete.
        """
        messages: list[bytes] = []
        if self._need:
            if len(data) < self._need:
                self._chunks.append(data)
                self._need -= len(data)
                return messages
            self._chunks.append(data[: self._need])
            body = b"".join(self._chunks)
            messages.append(self._inflate(body) if self._chunk_flag else body)
            data = data[self._need :]
            self._chunks = []
            self._need = 0
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray | memoryview = self._buffer
        else:
            buf = data
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            flag, length = HEADER.unpack_from(buf, pos)
            if flag:
                self._check_flag(flag)
            if length > self._max:
                raise ResourceExhausted(
                    f"received message larger than max ({length} vs. {self._max})"
                )
            start = pos + HEADER_SIZE
            if end - start >= length:
                if flag:
                    messages.append(self._inflate(buf[start : start + length]))
                else:
                    messages.append(bytes(buf[start : start + length]))
                pos = start + length
                continue
            self._chunk_flag = flag
            # Incomplete body: large remainders go to a chunk list (no quadratic re-buffering).
            # The buffer of our own is copied; what we were given is kept as a view.
            self._chunks = [bytes(buf[start:]) if isinstance(buf, bytearray) else buf[start:]]
            self._need = length - (end - start)
            self._buffer = bytearray()
            return messages
        self._buffer = bytearray(buf[pos:])
        return messages

    def feed(self, data: bytes, start: int, end: int, out: list[bytes]) -> int:
        """:meth:`receive_data` for ``data[start:end]``, appending the messages to ``out``;
        returns their framed size (5 + length each), what flow control counts as consumed
        once the application takes them (of inflated messages: their inflated size, what
        they occupy here).

        ``data`` must be bytes nobody changes (a read from the socket): messages are sliced
        from it directly, one copy each, and the rest of a large message is kept as a view.
        """
        if self._need or self._buffer:
            messages = self.receive_data(memoryview(data)[start:end])
            out += messages
            return sum([len(m) for m in messages]) + HEADER_SIZE * len(messages)
        size = 0
        pos = start
        limit = self._max
        while end - pos >= HEADER_SIZE:
            flag, length = HEADER.unpack_from(data, pos)
            if flag:
                self._check_flag(flag)
            if length > limit:
                raise ResourceExhausted(f"received message larger than max ({length} vs. {limit})")
            body = pos + HEADER_SIZE
            stop = body + length
            if stop > end:
                self._chunk_flag = flag
                self._chunks = [memoryview(data)[body:end]]
                self._need = stop - end
                return size
            message = self._inflate(data[body:stop]) if flag else data[body:stop]
            out.append(message)
            size += HEADER_SIZE + len(message)
            pos = stop
        if pos < end:
            self._buffer = bytearray(data[pos:end])
        return size

    def _check_flag(self, flag: int) -> None:
        if flag != 1:
            raise Internal(f"invalid message flag {flag}")
        if self.encoding == IDENTITY:
            raise Internal(
                "received a message with the compressed flag set, but the stream's "
                "grpc-encoding is identity (none was declared)"
            )

    def _inflate(self, body: bytes | bytearray | memoryview) -> bytes:
        return decompress(self.encoding, body, self._max)
