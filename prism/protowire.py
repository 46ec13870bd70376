"""Just enough of the protobuf wire format to route and answer without decoding messages.

The proxy routes on ``namespace`` and ``operation`` and forwards everything else as bytes; a
plugin's host reads the RFC's request envelopes and writes its response envelopes here
(:mod:`prism.sdk._envelope`). Decoding or encoding a whole betterproto2 message costs
~10 to 25 µs; reading a few top-level fields or writing a few tags a fraction of that. Nested
payloads (the ``Any`` a plugin's typed params travel in, its own messages) stay betterproto2's.
"""

from __future__ import annotations

from collections.abc import Iterator

from prism.grpc.wire.status import InvalidArgument

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InvalidArgument("malformed protobuf message (truncated varint)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """Every top-level field in wire order: ``(number, value)``, the value bytes for
    length-delimited fields and an int for varints (fixed-width values are skipped; ``text`` and
    ``blob`` refuse a varint where bytes belong). Raises :class:`InvalidArgument` for a
    malformed message."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = _varint(data, pos)
            yield number, value
            continue
        if wire_type == LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise InvalidArgument("malformed protobuf message (truncated field)")
            yield number, data[pos : pos + length]
            pos += length
            continue
        if wire_type == FIXED64:
            pos += 8
        elif wire_type == FIXED32:
            pos += 4
        else:
            raise InvalidArgument(f"malformed protobuf message (wire type {wire_type})")
        if pos > end:
            raise InvalidArgument("malformed protobuf message (truncated field)")


def scan(data: bytes, wanted: frozenset[int]) -> dict[int, bytes | int]:
    """The last occurrence of each wanted top-level field: bytes for length-delimited fields,
    int for varints. Raises :class:`InvalidArgument` for a malformed message."""
    return {number: value for number, value in fields(data) if number in wanted}


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
