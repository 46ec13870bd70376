"""Just enough of the protobuf wire format to route and answer without decoding messages.

The proxy routes on ``namespace`` and ``operation`` and forwards everything else as bytes; a
plugin's host reads the RFC's request envelopes and writes its response envelopes here
(:mod:`prism.sdk._envelope`). Decoding or encoding a whole betterproto2 message costs
~10 to 25 µs; reading a few top-level fields or writing a few tags a fraction of that. Nested
payloads (the ``Any`` a plugin's typed params travel in, its own messages) stay betterproto2's.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from prism.grpc import protocheck
from prism.grpc.wire.status import InvalidArgument

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def fields(
    data: bytes, depth: int = protocheck.MAX_DEPTH, only: Container[int] | None = None
) -> Iterator[tuple[int, bytes | int | None]]:
    """Every top-level field in wire order: ``(number, value)``, the value bytes for
    length-delimited fields, an int for varints, None for fixed-width values and groups (which
    nothing here reads). ``depth`` is the nesting the message may still hold (protobuf's limit
    less the levels around it). ``only``: the numbers whose length-delimited values are
    wanted; the others come as None, uncopied (a payload the proxy forwards is never sliced
    out of its request just to be skipped). Raises :class:`InvalidArgument` for what
    protobuf's reference parser rejects (:mod:`prism.grpc.protocheck`); a field of a known
    number with another wire type than its own is for the caller to skip, as upb does."""
    pos, end = 0, len(data)
    read_varint = protocheck.read_varint
    try:
        while pos < end:
            # One-byte tags, varints and lengths (fields 1-15, values below 128: nearly all of
            # an envelope) are read inline; the rest by protocheck's readers, which check them.
            key = data[pos]
            if 8 <= key < 0x80:
                pos += 1
            else:
                key, pos = protocheck.read_tag(data, pos, end)
            number, wire_type = key >> 3, key & 7
            if wire_type == VARINT:
                if pos < end and data[pos] < 0x80:
                    value = data[pos]
                    pos += 1
                else:
                    value, pos = read_varint(data, pos, end)
                yield number, value
                continue
            if wire_type == LEN:
                if pos < end and data[pos] < 0x80:
                    length = data[pos]
                    pos += 1
                else:
                    length, pos = read_varint(data, pos, end)
                if pos + length > end:
                    raise InvalidArgument(
                        f"malformed protobuf message (field {number} runs past the end)"
                    )
                if only is None or number in only:
                    yield number, data[pos : pos + length]
                else:
                    yield number, None
                pos += length
                continue
            if wire_type == FIXED64:
                pos += 8
            elif wire_type == FIXED32:
                pos += 4
            elif wire_type == START_GROUP:
                pos = protocheck.skip_group(data, pos, end, number, depth)
            elif wire_type == END_GROUP:
                raise InvalidArgument(
                    f"malformed protobuf message (end of group {number} without its start)"
                )
            else:
                raise InvalidArgument(
                    f"malformed protobuf message (field {number}: wire type {wire_type})"
                )
            if pos > end:
                raise InvalidArgument(f"malformed protobuf message (field {number} truncated)")
            yield number, None
    except ValueError as exc:  # from protocheck's readers
        raise InvalidArgument(f"malformed protobuf message ({exc})") from None


def scan(data: bytes, wanted: frozenset[int]) -> dict[int, bytes | int]:
    """The last occurrence of each wanted top-level field: bytes for length-delimited fields,
    int for varints. Raises :class:`InvalidArgument` for a malformed message."""
    return {
        number: value
        for number, value in fields(data, only=wanted)
        if number in wanted and value is not None
    }


def text(value: bytes | int | None, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        raise InvalidArgument(f"field {field!r} has the wrong wire type")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"field {field!r} is not valid UTF-8") from None


def blob(value: bytes | int | None, field: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, int):
        raise InvalidArgument(f"field {field!r} has the wrong wire type")
    return value


# -- writing ---------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """A varint; negative numbers as protobuf writes int32/int64 (ten bytes, two's complement)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, value: bytes) -> bytes:
    """Field ``number`` (< 16) with wire type LEN and ``value``."""
    return bytes((number << 3 | LEN,)) + encode_varint(len(value)) + value


def varint_field(number: int, value: int) -> bytes:
    """Field ``number`` (< 16) with wire type VARINT."""
    return bytes((number << 3 | VARINT,)) + encode_varint(value)
