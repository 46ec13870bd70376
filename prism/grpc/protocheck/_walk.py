"""The walk: the wire format read as upb reads it, driven by a compiled schema."""

from __future__ import annotations

from typing import Any

from prism.grpc.protocheck._schema import (
    BOOL,
    EGROUP,
    ENUM,
    I32,
    I64,
    LEN,
    MASK64,
    MESSAGE,
    PACKED_ENUM,
    PACKED_I32,
    PACKED_I64,
    PACKED_VARINT,
    PLAIN,
    SGROUP,
    STRING,
    VARINT,
    Schema,
)

#: upb's default nesting limit (``kUpb_WireFormat_DefaultDepthLimit``): messages and groups.
MAX_DEPTH = 100

# The result of a walk: accepted, but betterproto2 must read a rewritten copy.
REWRITE = 1


class Malformed(ValueError):
    """Inside the walk: what is wrong, built up with the path as it propagates out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _where(schema: Schema, number: int) -> str:
    name = schema.names.get(number)
    return f"field {number} ({name})" if name else f"field {number}"


def _skip_varint(data: Any, pos: int, end: int) -> int:
    """The position after the varint whose first byte, at ``pos``, has its high bit set."""
    limit = pos + 10
    while True:
        pos += 1
        if pos >= end:
            raise Malformed("truncated varint")
        if pos >= limit:
            raise Malformed("varint longer than 10 bytes")
        if data[pos] < 0x80:
            return pos + 1


def read_varint(data: Any, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``data[pos:end]`` (at most 10 bytes, as upb reads it: bits past 64 are
    kept here, callers mask) and the position after it. Raises ``ValueError`` when it is
    truncated or too long."""
    value = shift = 0
    limit = pos + 10
    while True:
        if pos >= end:
            raise Malformed("truncated varint")
        if pos >= limit:
            raise Malformed("varint longer than 10 bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def read_tag(data: Any, pos: int, end: int) -> tuple[int, int]:
    """A field's tag (``number << 3 | wire type``) and the position after it. Raises
    ``ValueError`` for what upb rejects: more than 5 bytes, above 2**32-1, field number 0."""
    tag, pos = _read_any_tag(data, pos, end)
    if tag < 8:
        raise Malformed("field number 0")
    return tag, pos


def _read_any_tag(data: Any, pos: int, end: int) -> tuple[int, int]:
    # Inside an unknown group upb takes field number 0 too.
    start = pos
    tag, pos = read_varint(data, pos, end)
    if pos - start > 5 or tag > 0xFFFFFFFF:
        raise Malformed("field tag longer than 5 bytes or above 2**32-1")
    return tag, pos


def skip_group(data: Any, pos: int, end: int, number: int, depth: int) -> int:
    """The position after the end-group tag that closes group ``number`` (its start-group tag
    ends just before ``pos``); ``depth`` is the nesting left for it (upb's limit less the
    levels around it). Its contents are unknown fields, checked for form only (upb takes field
    number 0 there). Raises
    ``ValueError`` when malformed."""
    if depth <= 0:
        raise Malformed(f"nested deeper than {MAX_DEPTH}")
    while pos < end:
        tag, pos = _read_any_tag(data, pos, end)
        wire = tag & 7
        if wire == VARINT:
            _, pos = read_varint(data, pos, end)
        elif wire == LEN:
            length, pos = read_varint(data, pos, end)
            pos += length
        elif wire == I32:
            pos += 4
        elif wire == I64:
            pos += 8
        elif wire == SGROUP:
            pos = skip_group(data, pos, end, tag >> 3, depth - 1)
        elif wire == EGROUP:
            if tag >> 3 != number:
                raise Malformed(f"group {number} ended by the end of group {tag >> 3}")
            return pos
        else:
            raise Malformed(f"field {tag >> 3}: invalid wire type {wire}")
        if pos > end:
            raise Malformed(f"field {tag >> 3} runs past the end of group {number}")
    raise Malformed(f"group {number} without its end")


def walk(data: Any, pos: int, end: int, schema: Schema, depth: int) -> int:
    """Checks the message in ``data[pos:end]``, nested ``MAX_DEPTH - depth`` levels deep;
    returns ``REWRITE`` or 0."""
    fields = schema.fields
    flags = seen = 0
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
            if tag < 8:
                raise Malformed("field number 0")
        else:
            tag, pos = read_tag(data, pos, end)
        wire = tag & 7
        if wire == VARINT:
            start = pos
            if pos >= end:
                raise Malformed(f"{_where(schema, tag >> 3)}: truncated varint")
            if data[pos] < 0x80:
                pos += 1
            else:
                try:
                    pos = _skip_varint(data, pos, end)
                except Malformed as exc:
                    raise Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
        elif wire == LEN:
            if pos >= end:
                raise Malformed(f"{_where(schema, tag >> 3)}: truncated length")
            length = data[pos]
            if length < 0x80:
                pos += 1
            else:
                try:
                    length, pos = read_varint(data, pos, end)
                except Malformed as exc:
                    raise Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
            start = pos
            pos += length
            if pos > end:
                raise Malformed(f"{_where(schema, tag >> 3)} runs past the end of its message")
        elif wire == I32:
            start = pos
            pos += 4
            if pos > end:
                raise Malformed(f"{_where(schema, tag >> 3)}: truncated fixed32")
        elif wire == I64:
            start = pos
            pos += 8
            if pos > end:
                raise Malformed(f"{_where(schema, tag >> 3)}: truncated fixed64")
        elif wire == SGROUP:
            pos = skip_group(data, pos, end, tag >> 3, depth)
            flags = REWRITE  # betterproto2 would read a group's contents as fields
            continue
        elif wire == EGROUP:
            raise Malformed(f"end of group {tag >> 3} without its start")
        else:
            raise Malformed(f"{_where(schema, tag >> 3)}: invalid wire type {wire}")
        spec = fields.get(tag)
        if spec is None:
            if schema.map_entry or tag >> 3 in schema.numbers:
                flags = REWRITE  # a known field with another wire type: unknown to upb
            continue
        kind, sub, bit = spec
        if bit:
            if seen & bit:
                flags = REWRITE
            seen |= bit
        if kind == PLAIN:
            continue
        if kind == STRING:
            try:
                data[start:pos].decode()
            except UnicodeDecodeError:
                raise Malformed(f"{_where(schema, tag >> 3)}: invalid UTF-8") from None
        elif kind == MESSAGE:
            assert sub is not None
            if depth <= 0:
                raise Malformed(f"nested deeper than {MAX_DEPTH}")
            try:
                flags |= walk(data, start, pos, sub, depth - 1)
            except Malformed as exc:
                raise Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
        elif kind <= BOOL:
            if pos - start >= (5 if kind == ENUM else 10) and _noncanonical(kind, data, start, pos):
                flags = REWRITE
        else:
            try:
                flags |= _walk_packed(data, start, pos, kind)
            except Malformed as exc:
                raise Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
    if schema.required & ~seen:
        flags = REWRITE
    return flags


def _noncanonical(kind: int, data: Any, start: int, end: int) -> bool:
    """An enum or bool varint betterproto2 reads differently from upb: upb keeps the low 32
    (enum) or 64 (bool) bits; betterproto2 sign-extends 64 bits / compares the whole value."""
    value, _ = read_varint(data, start, end)
    if kind == BOOL:
        return value > 0 and not value & MASK64
    value &= MASK64
    return not (value < 1 << 31 or value >= (1 << 64) - (1 << 31))


def _walk_packed(data: Any, pos: int, end: int, kind: int) -> int:
    if kind in (PACKED_I32, PACKED_I64):
        if (end - pos) % (4 if kind == PACKED_I32 else 8):
            raise Malformed("packed fixed-width values of a partial length")
        return 0
    flags = 0
    while pos < end:
        start = pos
        pos = pos + 1 if data[pos] < 0x80 else _skip_varint(data, pos, end)
        if (
            kind != PACKED_VARINT
            and pos - start >= (5 if kind == PACKED_ENUM else 10)
            and _noncanonical(ENUM if kind == PACKED_ENUM else BOOL, data, start, pos)
        ):
            flags = REWRITE
    return flags
