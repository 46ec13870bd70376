"""The rewrite (rare): accepted bytes betterproto2 would misread, as bytes it reads as upb does."""

from __future__ import annotations

from typing import Any

from prism.grpc.protocheck._schema import (
    BOOL,
    ENUM,
    I32,
    LEN,
    MASK64,
    MESSAGE,
    PACKED_BOOL,
    PACKED_ENUM,
    SGROUP,
    VARINT,
    Schema,
)
from prism.grpc.protocheck._walk import MAX_DEPTH, read_tag, read_varint, skip_group


def _varint_bytes(value: int) -> bytes:
    value &= MASK64
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | LEN) + _varint_bytes(len(payload)) + payload


def _canonical(kind: int, value: int) -> int:
    if kind == BOOL:
        return int(bool(value & MASK64))
    value &= 0xFFFFFFFF  # upb's enum is an int32: its low 32 bits, sign-extended
    return value - (1 << 32) if value & 0x80000000 else value


def rewrite(data: Any, pos: int, end: int, schema: Schema) -> tuple[bytes, bool]:
    """Already-checked message bytes as betterproto2 must see them to read what upb reads:
    groups and known fields with another wire type dropped, a singular message's occurrences
    merged into one, only the last ``oneof`` member kept, varints made canonical, map entries
    upb keeps out of its map dropped. Also returns whether the message had unknown fields."""
    fields = schema.fields
    out = bytearray()
    unknown = False
    # Fields with a bit, emitted at the end: number → (tag, raw values), all of a message's
    # occurrences (to merge), or the last scalar.
    pending: dict[int, tuple[int, list[Any]]] = {}
    oneof_member: dict[int, int] = {}  # oneof bit → the number of its current member
    while pos < end:
        field_start = pos
        tag, pos = read_tag(data, pos, end)
        wire = tag & 7
        if wire == SGROUP:
            pos = skip_group(data, pos, end, tag >> 3, MAX_DEPTH)
            unknown = True
            continue
        if wire == VARINT:
            start = pos
            _, pos = read_varint(data, pos, end)
        elif wire == LEN:
            length, start = read_varint(data, pos, end)
            pos = start + length
        else:
            start = pos
            pos += 4 if wire == I32 else 8
        number = tag >> 3
        spec = fields.get(tag)
        if spec is None:
            unknown = True
            if number not in schema.numbers:
                out += data[field_start:pos]  # betterproto2 keeps unknown fields aside, as upb
            continue
        _, _, bit = spec
        if not bit:
            out += _encode(tag, spec, [data[start:pos]])
        elif bit & schema.oneofs and oneof_member.get(bit, number) != number:
            del pending[oneof_member[bit]]  # another member: the oneof now holds this one
            pending[number] = (tag, [data[start:pos]])
        elif number in pending and spec[0] == MESSAGE:
            pending[number][1].append(data[start:pos])
        else:
            pending[number] = (tag, [data[start:pos]])
        if bit & schema.oneofs:
            oneof_member[bit] = number
    for tag, values in pending.values():
        out += _encode(tag, fields[tag], values)
    for number, bit in schema.singular.items():
        if schema.required & bit and number not in pending:
            out += _len_field(number, b"")  # an absent message value is the empty message
    return bytes(out), unknown


def _encode(tag: int, spec: tuple[int, Schema | None, int], values: list[Any]) -> bytes:
    """One field as betterproto2 must see it: ``values`` are its raw values (several only for
    a message seen more than once: merged, as protobuf parses their concatenation)."""
    kind, sub, _ = spec
    if kind == MESSAGE:
        assert sub is not None
        payload = b"".join(values)
        payload, unknown = rewrite(payload, 0, len(payload), sub)
        if unknown and sub.map_entry:
            return b""
    elif kind in (ENUM, BOOL):
        payload = _varint_bytes(_canonical(kind, read_varint(values[-1], 0, len(values[-1]))[0]))
    elif kind in (PACKED_ENUM, PACKED_BOOL):
        single = ENUM if kind == PACKED_ENUM else BOOL
        run, out, at = values[-1], bytearray(), 0
        while at < len(run):
            value, at = read_varint(run, at, len(run))
            out += _varint_bytes(_canonical(single, value))
        payload = bytes(out)
    else:
        payload = bytes(values[-1])
    if tag & 7 == LEN:
        return _varint_bytes(tag) + _varint_bytes(len(payload)) + payload
    return _varint_bytes(tag) + payload
