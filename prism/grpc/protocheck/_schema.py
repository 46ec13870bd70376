"""Message classes compiled from betterproto2's own metadata for the walk (see the package)."""

from __future__ import annotations

import sys
from typing import Any

import betterproto2

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

# What a known tag asks of its value, beyond the wire format's own rules.
PLAIN, STRING, MESSAGE, ENUM, BOOL = 0, 1, 2, 3, 4
PACKED_VARINT, PACKED_ENUM, PACKED_BOOL, PACKED_I32, PACKED_I64 = 5, 6, 7, 8, 9

MASK64 = (1 << 64) - 1

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
_I32_TYPES = frozenset(
    {betterproto2.TYPE_FLOAT, betterproto2.TYPE_FIXED32, betterproto2.TYPE_SFIXED32}
)
_I64_TYPES = frozenset(
    {betterproto2.TYPE_DOUBLE, betterproto2.TYPE_FIXED64, betterproto2.TYPE_SFIXED64}
)


class Schema:
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
        self.fields: dict[int, tuple[int, Schema | None, int]] = {}
        self.numbers: frozenset[int] = frozenset()
        # For the rewrite: the bit of each tracked field; which bits are oneof groups; bits
        # that betterproto2 needs present (a map entry's message value).
        self.singular: dict[int, int] = {}
        self.oneofs = 0
        self.required = 0


# Derived from immutable generated classes only; one entry per message class ever decoded.
_SCHEMAS: dict[type[betterproto2.Message], Schema] = {}


def compiled(cls: type[betterproto2.Message]) -> Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        building: dict[type[betterproto2.Message], Schema] = {}
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
    building: dict[type[betterproto2.Message], Schema],
    *,
    map_entry: bool,
) -> Schema:
    known = _SCHEMAS.get(cls) or building.get(cls)
    if known is not None:
        return known
    schema = building[cls] = Schema(_full_name(cls), map_entry=map_entry)
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
        sub: Schema | None = None
        if proto_type == betterproto2.TYPE_MAP:
            entry = info.cls_by_field[name]
            sub = _compile(entry, building, map_entry=True)
            tags = {LEN: MESSAGE}
        elif proto_type == betterproto2.TYPE_MESSAGE:
            sub_cls = meta.unwrap() if meta.unwrap else info.cls_by_field[name]
            sub = _compile(sub_cls, building, map_entry=False)
            if not meta.repeated and not bit:
                bit = bit_for(name)
                if map_entry and number == 2:
                    schema.required |= bit  # betterproto2 reads an absent value as None
            tags = {LEN: MESSAGE}
        elif proto_type == betterproto2.TYPE_STRING:
            tags = {LEN: STRING}
        elif proto_type == betterproto2.TYPE_BYTES:
            tags = {LEN: PLAIN}
        elif proto_type == betterproto2.TYPE_ENUM:
            tags = {VARINT: ENUM, LEN: PACKED_ENUM}
        elif proto_type == betterproto2.TYPE_BOOL:
            tags = {VARINT: BOOL, LEN: PACKED_BOOL}
        elif proto_type in _VARINT_TYPES:
            tags = {VARINT: PLAIN, LEN: PACKED_VARINT}
        elif proto_type in _I32_TYPES:
            tags = {I32: PLAIN, LEN: PACKED_I32}
        elif proto_type in _I64_TYPES:
            tags = {I64: PLAIN, LEN: PACKED_I64}
        else:  # pragma: no cover - betterproto2 has no other types
            raise TypeError(f"{cls.__qualname__}.{name}: unknown protobuf type {proto_type!r}")
        if not meta.repeated:
            # Packed encoding is for repeated scalars; on a singular one LEN is unknown.
            tags = {wire: kind for wire, kind in tags.items() if kind < PACKED_VARINT}
        for wire, kind in tags.items():
            schema.fields[number << 3 | wire] = (kind, sub, bit)
        if bit:
            schema.singular[number] = bit
    schema.numbers = frozenset(numbers)
    return schema
