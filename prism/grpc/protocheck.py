"""Protobuf's reference parser's verdict on bytes, before betterproto2 reads them.

betterproto2 0.10 is lenient: it reads a string declared as 5 bytes with 2 present as the 2
bytes, reads the contents of a group as top-level fields, takes a varint where a string belongs
and keeps the int. :func:`parse` first walks the bytes as upb (the ``protobuf`` package) does,
driven by the message class's own betterproto2 metadata, and rejects with ``InvalidArgument``
what upb rejects:

- truncated varints, lengths and fixed-width fields; varints longer than 10 bytes; tags longer
  than 5 bytes or above 2**32-1; field number 0; wire types 6 and 7; an end-group without its
  start, a start-group without its end or with another number's end;
- a length-delimited field (or a packed run of scalars) past the end of its message, packed
  fixed-width scalars whose length is not a multiple of their size;
- invalid UTF-8 in a ``string`` field (map keys and values included) of this message or of any
  message field nested in it, and any nested message that is itself malformed;
- nesting deeper than upb's limit of 100 (messages and groups together).

It accepts what upb accepts: unknown fields (groups included), a known field with another wire
type (kept as unknown), packed and unpacked repeated scalars, any enum value, the last of
several values of a scalar or a ``oneof``, several occurrences of a message field (merged).
Where betterproto2 would read such accepted bytes differently from upb (a group, a known field
with another wire type, a message field or ``oneof`` seen twice, a map entry without its message
value, an enum or bool varint past 32/64 bits), the bytes are rewritten for betterproto2 into
the equivalent protobuf's parser reads; this is rare and only then costs more.

The walk is a few µs for a small message (``python -m bench protocheck``): cheaper than
betterproto2's own parse by an order of magnitude, so it runs on every message the stack
decodes. Fields without a schema (``bytes`` handlers, the proxy's forwarded payloads) are never
walked.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import betterproto2

from prism.grpc.wire.status import InvalidArgument

__all__ = [
    "MAX_DEPTH",
    "MalformedMessage",
    "check",
    "parse",
    "read_tag",
    "read_varint",
    "skip_group",
]

M = TypeVar("M", bound=betterproto2.Message)

#: upb's default nesting limit (``kUpb_WireFormat_DefaultDepthLimit``): messages and groups.
MAX_DEPTH = 100

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

# What a known tag asks of its value, beyond the wire format's own rules.
_PLAIN, _STRING, _MESSAGE, _ENUM, _BOOL = 0, 1, 2, 3, 4
_PACKED_VARINT, _PACKED_ENUM, _PACKED_BOOL, _PACKED_I32, _PACKED_I64 = 5, 6, 7, 8, 9

# The result of a walk: accepted, but betterproto2 must read a rewritten copy.
_REWRITE = 1

_MASK64 = (1 << 64) - 1

_VARINT_TYPES = frozenset(
    {
        betterproto2.TYPE_INT32,
        betterproto2.TYPE_INT64,
        betterproto2.TYPE_UINT32,
        betterproto2.TYPE_UINT64,
        betterproto2.TYPE_SINT32,
        betterproto2.TYPE_SINT64,
    }
)
_I32_TYPES = frozenset({betterproto2.TYPE_FLOAT, betterproto2.TYPE_FIXED32, "sfixed32"})
_I64_TYPES = frozenset({betterproto2.TYPE_DOUBLE, betterproto2.TYPE_FIXED64, "sfixed64"})


class MalformedMessage(InvalidArgument):
    """Bytes protobuf's parser rejects as ``message_type`` (INVALID_ARGUMENT). ``reason`` says
    what is wrong and where, never quoting the bytes."""

    def __init__(self, message_type: str, reason: str) -> None:
        super().__init__(f"malformed {message_type}: {reason}")
        self.message_type = message_type
        self.reason = reason


class _Malformed(ValueError):
    """Inside the walk: what is wrong, built up with the path as it propagates out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Schema:
    """One message class, compiled for the walk.

    ``fields`` maps a whole tag (number << 3 | wire type) to ``(kind, schema, bit)``: a tag of a
    known number with another wire type is not in it, and is unknown, as upb has it. ``bit`` is
    nonzero for fields whose second occurrence betterproto2 reads differently (a singular
    message; every member of a ``oneof`` shares its group's bit).
    """

    __slots__ = (
        "fields",
        "map_entry",
        "name",
        "names",
        "numbers",
        "oneofs",
        "required",
        "singular",
    )

    def __init__(self, name: str, *, map_entry: bool) -> None:
        self.name = name
        # upb keeps a map entry holding any unknown field out of the map (as an unknown field
        # of the message around it).
        self.map_entry = map_entry
        self.names: dict[int, str] = {}  # for errors: "field 1 (key)"
        self.fields: dict[int, tuple[int, _Schema | None, int]] = {}
        self.numbers: frozenset[int] = frozenset()
        # For the rewrite: the bit of each tracked field; which bits are oneof groups; bits
        # that betterproto2 needs present (a map entry's message value).
        self.singular: dict[int, int] = {}
        self.oneofs = 0
        self.required = 0


# Derived from immutable generated classes only; one entry per message class ever decoded.
_SCHEMAS: dict[type[betterproto2.Message], _Schema] = {}


def _schema(cls: type[betterproto2.Message]) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        building: dict[type[betterproto2.Message], _Schema] = {}
        schema = _compile(cls, building, map_entry=False)
        # Published only once complete (a recursive type refers to itself while compiling).
        _SCHEMAS.update(building)
    return schema


def _full_name(cls: type) -> str:
    pool = getattr(sys.modules.get(cls.__module__), "default_message_pool", None)
    url = pool.type_to_url.get(cls) if isinstance(pool, betterproto2.MessagePool) else None
    return url.rpartition("/")[2] if url else cls.__qualname__


def _compile(
    cls: type[betterproto2.Message],
    building: dict[type[betterproto2.Message], _Schema],
    *,
    map_entry: bool,
) -> _Schema:
    known = _SCHEMAS.get(cls) or building.get(cls)
    if known is not None:
        return known
    schema = building[cls] = _Schema(_full_name(cls), map_entry=map_entry)
    # betterproto2's per-class field metadata (a class property; typed loosely).
    info: Any = getattr(cls, "_betterproto")  # noqa: B009
    bits: dict[str, int] = {}
    numbers = set()

    def bit_for(key: str) -> int:
        if key not in bits:
            bits[key] = 1 << len(bits)
        return bits[key]

    for name, meta in info.meta_by_field_name.items():
        number, proto_type = meta.number, meta.proto_type
        numbers.add(number)
        schema.names[number] = name
        bit = bit_for(f"group {meta.group}") if meta.group else 0
        if bit:
            schema.oneofs |= bit
        sub: _Schema | None = None
        if proto_type == betterproto2.TYPE_MAP:
            entry = info.cls_by_field[name]
            sub = _compile(entry, building, map_entry=True)
            tags = {_LEN: _MESSAGE}
        elif proto_type == betterproto2.TYPE_MESSAGE:
            sub_cls = meta.unwrap() if meta.unwrap else info.cls_by_field[name]
            sub = _compile(sub_cls, building, map_entry=False)
            if not meta.repeated and not bit:
                bit = bit_for(name)
                if map_entry and number == 2:
                    schema.required |= bit  # betterproto2 reads an absent value as None
            tags = {_LEN: _MESSAGE}
        elif proto_type == betterproto2.TYPE_STRING:
            tags = {_LEN: _STRING}
        elif proto_type == betterproto2.TYPE_BYTES:
            tags = {_LEN: _PLAIN}
        elif proto_type == betterproto2.TYPE_ENUM:
            tags = {_VARINT: _ENUM, _LEN: _PACKED_ENUM}
        elif proto_type == betterproto2.TYPE_BOOL:
            tags = {_VARINT: _BOOL, _LEN: _PACKED_BOOL}
        elif proto_type in _VARINT_TYPES:
            tags = {_VARINT: _PLAIN, _LEN: _PACKED_VARINT}
        elif proto_type in _I32_TYPES:
            tags = {_I32: _PLAIN, _LEN: _PACKED_I32}
        elif proto_type in _I64_TYPES:
            tags = {_I64: _PLAIN, _LEN: _PACKED_I64}
        else:  # pragma: no cover - betterproto2 has no other types
            raise TypeError(f"{cls.__qualname__}.{name}: unknown protobuf type {proto_type!r}")
        if not meta.repeated:
            # Packed encoding is for repeated scalars; on a singular one LEN is unknown.
            tags = {wire: kind for wire, kind in tags.items() if kind < _PACKED_VARINT}
        for wire, kind in tags.items():
            schema.fields[number << 3 | wire] = (kind, sub, bit)
        if bit:
            schema.singular[number] = bit
    schema.numbers = frozenset(numbers)
    return schema


# -- the walk --------------------------------------------------------------------------------


def _where(schema: _Schema, number: int) -> str:
    name = schema.names.get(number)
    return f"field {number} ({name})" if name else f"field {number}"


def _skip_varint(data: Any, pos: int, end: int) -> int:
    """The position after the varint whose first byte, at ``pos``, has its high bit set."""
    limit = pos + 10
    while True:
        pos += 1
        if pos >= end:
            raise _Malformed("truncated varint")
        if pos >= limit:
            raise _Malformed("varint longer than 10 bytes")
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
            raise _Malformed("truncated varint")
        if pos >= limit:
            raise _Malformed("varint longer than 10 bytes")
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
        raise _Malformed("field number 0")
    return tag, pos


def _read_any_tag(data: Any, pos: int, end: int) -> tuple[int, int]:
    # Inside an unknown group upb takes field number 0 too.
    start = pos
    tag, pos = read_varint(data, pos, end)
    if pos - start > 5 or tag > 0xFFFFFFFF:
        raise _Malformed("field tag longer than 5 bytes or above 2**32-1")
    return tag, pos


def skip_group(data: Any, pos: int, end: int, number: int, depth: int) -> int:
    """The position after the end-group tag that closes group ``number`` (its start-group tag
    ends just before ``pos``); ``depth`` is the nesting left for it (upb's limit less the
    levels around it). Its contents are unknown fields, checked for form only (upb takes field
    number 0 there). Raises
    ``ValueError`` when malformed."""
    if depth <= 0:
        raise _Malformed(f"nested deeper than {MAX_DEPTH}")
    while pos < end:
        tag, pos = _read_any_tag(data, pos, end)
        wire = tag & 7
        if wire == _VARINT:
            _, pos = read_varint(data, pos, end)
        elif wire == _LEN:
            length, pos = read_varint(data, pos, end)
            pos += length
        elif wire == _I32:
            pos += 4
        elif wire == _I64:
            pos += 8
        elif wire == _SGROUP:
            pos = skip_group(data, pos, end, tag >> 3, depth - 1)
        elif wire == _EGROUP:
            if tag >> 3 != number:
                raise _Malformed(f"group {number} ended by the end of group {tag >> 3}")
            return pos
        else:
            raise _Malformed(f"field {tag >> 3}: invalid wire type {wire}")
        if pos > end:
            raise _Malformed(f"field {tag >> 3} runs past the end of group {number}")
    raise _Malformed(f"group {number} without its end")


def _walk(data: Any, pos: int, end: int, schema: _Schema, depth: int) -> int:
    """Checks the message in ``data[pos:end]``, nested ``MAX_DEPTH - depth`` levels deep;
    returns ``_REWRITE`` or 0."""
    fields = schema.fields
    flags = seen = 0
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
            if tag < 8:
                raise _Malformed("field number 0")
        else:
            tag, pos = read_tag(data, pos, end)
        wire = tag & 7
        if wire == _VARINT:
            start = pos
            if pos >= end:
                raise _Malformed(f"{_where(schema, tag >> 3)}: truncated varint")
            if data[pos] < 0x80:
                pos += 1
            else:
                try:
                    pos = _skip_varint(data, pos, end)
                except _Malformed as exc:
                    raise _Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
        elif wire == _LEN:
            if pos >= end:
                raise _Malformed(f"{_where(schema, tag >> 3)}: truncated length")
            length = data[pos]
            if length < 0x80:
                pos += 1
            else:
                try:
                    length, pos = read_varint(data, pos, end)
                except _Malformed as exc:
                    raise _Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
            start = pos
            pos += length
            if pos > end:
                raise _Malformed(f"{_where(schema, tag >> 3)} runs past the end of its message")
        elif wire == _I32:
            start = pos
            pos += 4
            if pos > end:
                raise _Malformed(f"{_where(schema, tag >> 3)}: truncated fixed32")
        elif wire == _I64:
            start = pos
            pos += 8
            if pos > end:
                raise _Malformed(f"{_where(schema, tag >> 3)}: truncated fixed64")
        elif wire == _SGROUP:
            pos = skip_group(data, pos, end, tag >> 3, depth)
            flags = _REWRITE  # betterproto2 would read a group's contents as fields
            continue
        elif wire == _EGROUP:
            raise _Malformed(f"end of group {tag >> 3} without its start")
        else:
            raise _Malformed(f"{_where(schema, tag >> 3)}: invalid wire type {wire}")
        spec = fields.get(tag)
        if spec is None:
            if schema.map_entry or tag >> 3 in schema.numbers:
                flags = _REWRITE  # a known field with another wire type: unknown to upb
            continue
        kind, sub, bit = spec
        if bit:
            if seen & bit:
                flags = _REWRITE
            seen |= bit
        if kind == _PLAIN:
            continue
        if kind == _STRING:
            try:
                data[start:pos].decode()
            except UnicodeDecodeError:
                raise _Malformed(f"{_where(schema, tag >> 3)}: invalid UTF-8") from None
        elif kind == _MESSAGE:
            assert sub is not None
            if depth <= 0:
                raise _Malformed(f"nested deeper than {MAX_DEPTH}")
            try:
                flags |= _walk(data, start, pos, sub, depth - 1)
            except _Malformed as exc:
                raise _Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
        elif kind <= _BOOL:
            if pos - start >= (5 if kind == _ENUM else 10) and _noncanonical(
                kind, data, start, pos
            ):
                flags = _REWRITE
        else:
            try:
                flags |= _walk_packed(data, start, pos, kind)
            except _Malformed as exc:
                raise _Malformed(f"{_where(schema, tag >> 3)}: {exc.reason}") from None
    if schema.required & ~seen:
        flags = _REWRITE
    return flags


def _noncanonical(kind: int, data: Any, start: int, end: int) -> bool:
    """An enum or bool varint betterproto2 reads differently from upb: upb keeps the low 32
    (enum) or 64 (bool) bits; betterproto2 sign-extends 64 bits / compares the whole value."""
    value, _ = read_varint(data, start, end)
    if kind == _BOOL:
        return value > 0 and not value & _MASK64
    value &= _MASK64
    return not (value < 1 << 31 or value >= (1 << 64) - (1 << 31))


def _walk_packed(data: Any, pos: int, end: int, kind: int) -> int:
    if kind in (_PACKED_I32, _PACKED_I64):
        if (end - pos) % (4 if kind == _PACKED_I32 else 8):
            raise _Malformed("packed fixed-width values of a partial length")
        return 0
    flags = 0
    while pos < end:
        start = pos
        pos = pos + 1 if data[pos] < 0x80 else _skip_varint(data, pos, end)
        if (
            kind != _PACKED_VARINT
            and pos - start >= (5 if kind == _PACKED_ENUM else 10)
            and _noncanonical(_ENUM if kind == _PACKED_ENUM else _BOOL, data, start, pos)
        ):
            flags = _REWRITE
    return flags


# -- the rewrite (rare: only for bytes betterproto2 would misread) --------------------------


def _varint_bytes(value: int) -> bytes:
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | _LEN) + _varint_bytes(len(payload)) + payload


def _canonical(kind: int, value: int) -> int:
    if kind == _BOOL:
        return int(bool(value & _MASK64))
    value &= 0xFFFFFFFF  # upb's enum is an int32: its low 32 bits, sign-extended
    return value - (1 << 32) if value & 0x80000000 else value


def _rewrite(data: Any, pos: int, end: int, schema: _Schema) -> tuple[bytes, bool]:
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
        if wire == _SGROUP:
            pos = skip_group(data, pos, end, tag >> 3, MAX_DEPTH)
            unknown = True
            continue
        if wire == _VARINT:
            start = pos
            _, pos = read_varint(data, pos, end)
        elif wire == _LEN:
            length, start = read_varint(data, pos, end)
            pos = start + length
        else:
            start = pos
            pos += 4 if wire == _I32 else 8
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
        elif number in pending and spec[0] == _MESSAGE:
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


def _encode(tag: int, spec: tuple[int, _Schema | None, int], values: list[Any]) -> bytes:
    """One field as betterproto2 must see it: ``values`` are its raw values (several only for
    a message seen more than once: merged, as protobuf parses their concatenation)."""
    kind, sub, _ = spec
    if kind == _MESSAGE:
        assert sub is not None
        payload = b"".join(values)
        payload, unknown = _rewrite(payload, 0, len(payload), sub)
        if unknown and sub.map_entry:
            return b""
    elif kind in (_ENUM, _BOOL):
        payload = _varint_bytes(_canonical(kind, read_varint(values[-1], 0, len(values[-1]))[0]))
    elif kind in (_PACKED_ENUM, _PACKED_BOOL):
        single = _ENUM if kind == _PACKED_ENUM else _BOOL
        run, out, at = values[-1], bytearray(), 0
        while at < len(run):
            value, at = read_varint(run, at, len(run))
            out += _varint_bytes(_canonical(single, value))
        payload = bytes(out)
    else:
        payload = bytes(values[-1])
    if tag & 7 == _LEN:
        return _varint_bytes(tag) + _varint_bytes(len(payload)) + payload
    return _varint_bytes(tag) + payload


# -- public ----------------------------------------------------------------------------------


def check(cls: type[betterproto2.Message], data: bytes) -> bytes:
    """``data`` if protobuf's parser accepts it as ``cls`` and betterproto2 reads it the same
    way; the equivalent bytes betterproto2 reads correctly if it would not; raises
    ``InvalidArgument`` naming the message and what is wrong if protobuf rejects it."""
    schema = _schema(cls)
    if type(data) is not bytes:
        data = bytes(data)  # indexing and slicing bytes is what the walk is fastest on
    try:
        flags = _walk(data, 0, len(data), schema, MAX_DEPTH)
    except _Malformed as exc:
        raise MalformedMessage(schema.name, exc.reason) from None
    if flags:
        return _rewrite(data, 0, len(data), schema)[0]
    return data


def parse(cls: type[M], data: bytes) -> M:
    """``cls`` decoded from ``data`` strictly (see the module docstring): what protobuf's
    reference parser rejects raises ``InvalidArgument``; what it accepts decodes to the values
    it would decode."""
    return cls.parse(check(cls, data))
