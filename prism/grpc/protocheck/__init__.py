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
with another wire type, a message field or ``oneof`` seen twice, a map entry with an unknown
field, which upb leaves out of the map, or without its message value, an enum or bool varint
past 32/64 bits), they are first rewritten into an equivalent encoding betterproto2 reads as
upb does; that is rare, and only then costs more.

The walk costs a few µs for a small message, about a tenth of betterproto2's own parse
(``python -m bench protobuf``), so it runs on every message the stack decodes. Payloads without
a message type (``bytes`` handlers, the proxy's forwarded messages) are never walked.
"""

from __future__ import annotations

from typing import TypeVar

import betterproto2

from prism.grpc.protocheck._rewrite import rewrite
from prism.grpc.protocheck._schema import compiled
from prism.grpc.protocheck._walk import (
    MAX_DEPTH,
    Malformed,
    read_tag,
    read_varint,
    skip_group,
    walk,
)
from prism.grpc.wire.status import InvalidArgument

__all__ = [
    "MAX_DEPTH",
    "MalformedMessage",
    "check",
    "message_name",
    "parse",
    "read_tag",
    "read_varint",
    "skip_group",
]

M = TypeVar("M", bound=betterproto2.Message)


class MalformedMessage(InvalidArgument):
    """Bytes protobuf's parser rejects as ``message_type`` (INVALID_ARGUMENT). ``reason`` says
    what is wrong and where, never quoting the bytes."""

    def __init__(self, message_type: str, reason: str) -> None:
        super().__init__(f"malformed {message_type}: {reason}")
        self.message_type = message_type
        self.reason = reason


def check(cls: type[betterproto2.Message], data: bytes) -> bytes:
    """``data`` if protobuf's parser accepts it as ``cls`` and betterproto2 reads it the same
    way; the equivalent bytes betterproto2 reads correctly if it would not; raises
    ``InvalidArgument`` naming the message and what is wrong if protobuf rejects it."""
    schema = compiled(cls)
    if type(data) is not bytes:
        data = bytes(data)  # indexing and slicing bytes is what the walk is fastest on
    try:
        flags = walk(data, 0, len(data), schema, MAX_DEPTH)
    except Malformed as exc:
        raise MalformedMessage(schema.name, exc.reason) from None
    if flags:
        return rewrite(data, 0, len(data), schema)[0]
    return data


def parse(cls: type[M], data: bytes) -> M:
    """``cls`` decoded from ``data`` strictly (see the module docstring): what protobuf's
    reference parser rejects raises ``InvalidArgument``; what it accepts decodes to the values
    it would decode."""
    return cls.parse(check(cls, data))


def message_name(cls: type[betterproto2.Message]) -> str:
    """The full protobuf name of a generated message class (as errors name it)."""
    return compiled(cls).name
