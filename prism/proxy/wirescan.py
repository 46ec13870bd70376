"""Read a few top-level fields of an encoded protobuf message without decoding the rest.

The proxy routes on ``namespace`` and ``operation`` and forwards everything else as bytes;
decoding a whole betterproto2 message costs ~25 µs, scanning two fields a fraction of that.
"""

from __future__ import annotations

from prism.grpc.wire.status import InvalidArgument

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


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


def scan(data: bytes, fields: frozenset[int]) -> dict[int, bytes | int]:
    """The last occurrence of each wanted top-level field: bytes for length-delimited fields,
    int for varints. Raises :class:`InvalidArgument` for a malformed message."""
    found: dict[int, bytes | int] = {}
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _varint(data, pos)
            if number in fields:
                found[number] = value
        elif wire_type == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise InvalidArgument("malformed protobuf message (truncated field)")
            if number in fields:
                found[number] = data[pos : pos + length]
            pos += length
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise InvalidArgument(f"malformed protobuf message (wire type {wire_type})")
        if pos > end:
            raise InvalidArgument("malformed protobuf message (truncated field)")
    return found


def text(value: bytes | int | None, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        raise InvalidArgument(f"field {field!r} has the wrong wire type")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"field {field!r} is not valid UTF-8") from None
