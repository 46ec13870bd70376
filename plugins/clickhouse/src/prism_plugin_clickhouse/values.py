"""The contract's typed values to and from ClickHouse 18.16.

Parameters → the external table ``_prism_params`` (statements.py): each column's ClickHouse type
comes from the values in it (every row of a batch), its cells are TabSeparated text:

==================  ==========================  =============================================
Value               column type                 cell
==================  ==========================  =============================================
null_value          Nullable(T), T from the     ``\\N`` (a column of NULLs only:
                    other rows                  Nullable(UInt8), which casts to any column)
bool_value          UInt8                       1 / 0 (ClickHouse 18 has no Bool)
int64_value         Int64
double_value        Float64                     nan, inf, -inf as ClickHouse reads them
string_value        String                      escaped (\\\\, \\t, \\n, \\r, \\0)
bytes_value         String                      the bytes, escaped the same way
json_value          String                      the JSON text (ClickHouse 18 has no JSON type)
timestamp_value     DateTime('UTC')             whole seconds only: DateTime has no fraction
array_value         Array(T)                    ``[...]``, strings quoted
==================  ==========================  =============================================

Results come as TabSeparatedWithNamesAndTypes: the column names, their ClickHouse types, then
the rows, every byte of a String escaped, never replaced (ClickHouse's JSON formats replace bytes
that are not UTF-8 with U+FFFD, so they could not return a binary String). Each column's
decoder follows its type: Nullable → null_value or the inner type; Int*/UInt8..UInt32 →
int64_value (UInt64 above 2**63-1 → its decimal string_value); Float* → double_value (nan, inf
included); String/FixedString → string_value when the bytes are UTF-8, else bytes_value
(ClickHouse has one String type for both); DateTime → timestamp_value (in the column's or the
server's time zone); Date, Decimal, UUID, Enum and the rest → their text as string_value;
Array and Tuple → array_value; Nothing → null_value.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import betterproto2

from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import Array, Row, Value
from prism.sdk import InvalidArgument

__all__ = ["NULL", "decoder_for", "encode_rows", "parse_result", "typed_rows"]

NULL = Value(null_value=NullValue.NULL_VALUE)
_INT64_MAX = 2**63 - 1
_UTC = datetime.UTC


# -- parameters -------------------------------------------------------------------------------


_Param = tuple[str | None, Any]  # a parameter's oneof member (None: NULL) and its value


def _which(value: Value) -> _Param:
    kind, item = betterproto2.which_one_of(value, "kind")
    return (None, None) if kind in ("", "null_value") else (kind, item)


_SCALAR_TYPES = {
    "bool_value": "UInt8",
    "int64_value": "Int64",
    "double_value": "Float64",
    "string_value": "String",
    "bytes_value": "String",
    "json_value": "String",
    "timestamp_value": "DateTime('UTC')",
}


def _type_of(cells: Sequence[_Param], where: str) -> str:
    """The ClickHouse type of a column holding ``cells``."""
    types = set()
    nullable = False
    items: list[_Param] = []  # of every array: one element type for them all ([] fits any)
    for kind, raw in cells:
        if kind is None:
            nullable = True
        elif kind == "array_value":
            types.add("Array")
            items.extend(map(_which, raw.values))
        else:
            types.add(_SCALAR_TYPES[kind])
    if "Array" in types:
        types.discard("Array")
        types.add(f"Array({_type_of(items, where + '[]')})")
    if len(types) > 1:
        raise InvalidArgument(f"{where}: values of different types ({', '.join(sorted(types))})")
    if not types:
        return "Nullable(UInt8)"
    (found,) = types
    if nullable and found.startswith("Array"):
        raise InvalidArgument(f"{where}: an array cannot be NULL in ClickHouse (send [] instead)")
    return f"Nullable({found})" if nullable else found


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_SPECIAL = re.compile("[\\\\\t\n\r\0']")


def _text(kind: str | None, raw: Any, where: str, quoted: bool) -> str:
    if kind == "int64_value":
        return str(raw)
    if kind in ("string_value", "bytes_value", "json_value"):
        text: str = raw.decode("utf-8", "surrogateescape") if kind == "bytes_value" else raw
        if not _SPECIAL.search(text):
            return f"'{text}'" if quoted else text
        escaped = text.translate(_ESCAPES)
        return "'" + escaped.replace("'", "\\'") + "'" if quoted else escaped
    if kind is None:
        return "NULL" if quoted else "\\N"
    if kind == "bool_value":
        return "1" if raw else "0"
    if kind == "double_value":
        if math.isnan(raw):
            return "nan"
        if math.isinf(raw):
            return "inf" if raw > 0 else "-inf"
        return repr(float(raw))
    if kind == "timestamp_value":
        moment: datetime.datetime = raw
        if moment.microsecond:
            raise InvalidArgument(
                f"{where}: ClickHouse 18 DateTime holds whole seconds; this timestamp has a "
                "fraction"
            )
        return moment.astimezone(_UTC).strftime("%Y-%m-%d %H:%M:%S")
    items = [_which(v) for v in raw.values]  # array_value
    return (
        "[" + ",".join(_text(k, r, f"{where}[{i}]", True) for i, (k, r) in enumerate(items)) + "]"
    )


def encode_rows(rows: Sequence[Sequence[Value]], count: int) -> tuple[str, bytes]:
    """The external table's structure (``p1 T1, p2 T2, ...``) and its TabSeparated data."""
    for index, row in enumerate(rows):
        if len(row) != count:
            where = f"batch[{index}]: " if len(rows) > 1 else ""
            raise InvalidArgument(
                f"{where}the statement has {count} parameters ($1..${count}), {len(row)} given"
            )
    cells = [[_which(value) for value in row] for row in rows]
    structure = ", ".join(
        f"p{n + 1} {_type_of([row[n] for row in cells], f'${n + 1}')}" for n in range(count)
    )
    lines = [
        "\t".join(_text(kind, raw, f"${n + 1}", False) for n, (kind, raw) in enumerate(row))
        for row in cells
    ]
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    return structure, data


# -- results ----------------------------------------------------------------------------------

#: A parsed cell: None (NULL), its text (bytes, unescaped), or the items of an Array or Tuple.
Cell = bytes | list[Any] | None
Decoder = Callable[[Any], Value]
_WRAPPER = re.compile(r"(Nullable|LowCardinality|Array|Tuple)\((.*)\)\Z", re.DOTALL)
_DATETIME = re.compile(r"DateTime(?:\('([^']*)'\))?\Z")
_INTEGER = re.compile(r"U?Int(8|16|32|64)\Z")
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"0": b"\0"}


def _unescape(text: bytes) -> bytes:
    if b"\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), text)


def _split_types(inner: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(inner):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    parts.append(inner[start:].strip())
    return parts


def _composite(text: bytes, at: int) -> tuple[Cell, int]:
    """One value of ClickHouse's quoted text form (inside an Array or Tuple) at ``text[at]``:
    ``[...]``, ``(...)``, ``'...'`` (backslash escapes), ``NULL`` or a bare token."""
    opener = text[at : at + 1]
    if opener in (b"[", b"("):
        closer = b"]" if opener == b"[" else b")"
        items: list[Any] = []
        at += 1
        if text[at : at + 1] == closer:
            return items, at + 1
        while True:
            item, at = _composite(text, at)
            items.append(item)
            sep = text[at : at + 1]
            at += 1
            if sep == closer:
                return items, at
            if sep != b",":
                raise ValueError(f"unexpected {sep!r} in {text[:80]!r}")
    if opener == b"'":
        end = at + 1
        while text[end : end + 1] != b"'":
            end += 2 if text[end : end + 1] == b"\\" else 1
            if end >= len(text):
                raise ValueError(f"unterminated string in {text[:80]!r}")
        return _unescape(text[at + 1 : end]), end + 1
    end = at
    while end < len(text) and text[end : end + 1] not in (b",", b"]", b")"):
        end += 1
    token = text[at:end]
    return (None if token == b"NULL" else token), end


def _bare(type_name: str) -> str:
    wrapped = _WRAPPER.match(type_name)
    while wrapped and wrapped.group(1) in ("Nullable", "LowCardinality"):
        type_name = wrapped.group(2)
        wrapped = _WRAPPER.match(type_name)
    return type_name


def _cell(field: bytes, type_name: str) -> Cell:
    if field == b"\\N":
        return None
    if _bare(type_name).startswith(("Array(", "Tuple(")):
        value, _ = _composite(field, 0)
        return value
    return _unescape(field)


def _string(raw: bytes) -> Value:
    try:
        return Value(string_value=raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Value(bytes_value=raw)


def _integer(raw: bytes) -> Value:
    number = int(raw)
    return Value(string_value=str(number)) if number > _INT64_MAX else Value(int64_value=number)


def _double(raw: bytes) -> Value:
    return Value(double_value=float(raw))


def _text_value(raw: bytes) -> Value:
    return Value(string_value=raw.decode("utf-8", "replace"))


def decoder_for(type_name: str, server_zone: str) -> Decoder:
    """How to read one parsed cell of a column of ``type_name``."""
    wrapped = _WRAPPER.match(type_name)
    if wrapped:
        wrapper, inner = wrapped.groups()
        if wrapper == "Nullable":
            decode = decoder_for(inner, server_zone)
            return lambda raw: NULL if raw is None else decode(raw)
        if wrapper == "LowCardinality":
            return decoder_for(inner, server_zone)
        if wrapper == "Array":
            item = decoder_for(inner, server_zone)
            return lambda raw: Value(array_value=Array(values=[item(r) for r in raw]))
        items = [decoder_for(t, server_zone) for t in _split_types(inner)]
        return lambda raw: Value(
            array_value=Array(values=[d(r) for d, r in zip(items, raw, strict=True)])
        )
    if _INTEGER.match(type_name):
        return _integer
    if type_name in ("Float32", "Float64"):
        return _double
    if type_name == "String" or type_name.startswith("FixedString("):
        return _string
    if type_name == "Nothing":
        return lambda raw: NULL
    moment = _DATETIME.match(type_name)
    if moment:
        zone = ZoneInfo(moment.group(1) or server_zone)

        def timestamp(raw: bytes) -> Value:
            text = raw.decode()
            local = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
            return Value(timestamp_value=local.astimezone(_UTC))

        return timestamp
    return _text_value


def parse_result(body: bytes) -> tuple[list[tuple[str, str]], list[list[Cell]]]:
    """A TabSeparatedWithNamesAndTypes answer: its columns (name, type) and parsed cells."""
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) < 2:
        return [], []
    names = [_unescape(n).decode("utf-8", "replace") for n in lines[0].split(b"\t")]
    types = [_unescape(t).decode() for t in lines[1].split(b"\t")]
    rows = [
        [_cell(field, t) for field, t in zip(line.split(b"\t"), types, strict=True)]
        for line in lines[2:]
    ]
    return list(zip(names, types, strict=True)), rows


def typed_rows(
    columns: Sequence[tuple[str, str]], data: Sequence[Sequence[Cell]], server_zone: str
) -> list[Row]:
    decoders = [decoder_for(type_name, server_zone) for _, type_name in columns]
    return [
        Row(values=[decode(cell) for decode, cell in zip(decoders, row, strict=True)])
        for row in data
    ]
