"""The data model's typed values (``prism.data.v1.Value``) to PostgreSQL parameters and back.

Parameters are sent with a type where the value's kind names one, so the server never has to
guess: bool → ``bool``, int64 → ``int8``, double → ``float8``, bytes → ``bytea`` (binary, not
escaped), timestamp → ``timestamptz``, arrays → the array of their elements' type (``int8[]``,
``text[]``, ...). Strings, JSON and NULL are sent untyped, like a literal in the statement: the
server reads them as whatever their context needs (a ``date`` column, ``jsonb``, ``json``, an
enum), as psycopg does for strings. Arrays are 1-dimensional or nested (``{{1,2},{3,4}}``), of
one kind; an array mixing kinds is INVALID_ARGUMENT.

Rows come back in PostgreSQL's text format, decoded by column type: bool, the integer types,
``float4``/``float8``, ``bytea``, ``timestamp``/``timestamptz`` (a ``timestamp`` without time
zone is read as UTC: every connection runs with ``TimeZone=UTC``), ``json``/``jsonb`` (as
``json_value`` text) and arrays of those come back typed; every other type (``numeric``,
``date``, ``uuid``, ``interval``, enums, ranges, ...) as ``string_value`` holding the server's own
text for it, which loses nothing (``numeric`` stays exact).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence

import betterproto2

from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import Array, Value
from prism.sdk import InvalidArgument

__all__ = ["Param", "decoder_for", "encode_params"]

#: (value or None for NULL, type oid (0 = let the server infer), format: 0 text / 1 binary)
Param = tuple[bytes | None, int, int]

BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID = 16, 17, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, TIMESTAMP, TIMESTAMPTZ, JSONB = 114, 700, 701, 1114, 1184, 3802
UNKNOWN = 0

#: Array type of each element type the plugin sends.
_ARRAY_OF = {
    BOOL: 1000,
    BYTEA: 1001,
    INT8: 1016,
    TEXT: 1009,
    FLOAT8: 1022,
    TIMESTAMPTZ: 1185,
    JSONB: 3807,
}
#: Element type of each array type the plugin decodes typed.
_ELEMENT_OF = {
    1000: BOOL,
    1001: BYTEA,
    1005: INT2,
    1007: INT4,
    1016: INT8,
    1028: OID,
    1021: FLOAT4,
    1022: FLOAT8,
    1115: TIMESTAMP,
    1185: TIMESTAMPTZ,
    199: JSON,
    3807: JSONB,
    1009: TEXT,
    1015: TEXT,  # varchar[]
    1014: TEXT,  # bpchar[]
    1002: TEXT,  # char[]
    1003: TEXT,  # name[]
    # Arrays of types without a kind of their own: arrays of the server's text for each.
    1231: UNKNOWN,  # numeric[]
    1182: UNKNOWN,  # date[]
    1183: UNKNOWN,  # time[]
    1187: UNKNOWN,  # interval[]
    2951: UNKNOWN,  # uuid[]
    1041: UNKNOWN,  # inet[]
}

NULL = Value(null_value=NullValue.NULL_VALUE)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


# -- parameters ---------------------------------------------------------------------------------


def _timestamp_text(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).isoformat(timespec="microseconds")


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scalar(kind: str, item: object) -> tuple[str, int]:
    """A non-array value's text and the type it is sent as."""
    if kind == "bool_value":
        return ("t" if item else "f"), BOOL
    if kind == "int64_value":
        return str(item), INT8
    if kind == "double_value":
        assert isinstance(item, float)
        return _float_text(item), FLOAT8
    if kind == "string_value":
        assert isinstance(item, str)
        return item, TEXT
    if kind == "bytes_value":
        assert isinstance(item, bytes)
        return "\\x" + item.hex(), BYTEA
    if kind == "timestamp_value":
        assert isinstance(item, datetime.datetime)
        return _timestamp_text(item), TIMESTAMPTZ
    assert kind == "json_value"
    assert isinstance(item, str)
    return item, JSONB


def _array_text(array: Array, where: str) -> tuple[str, int]:
    """PostgreSQL's array literal for ``array`` and its element type (UNKNOWN when empty)."""
    parts: list[str] = []
    element = UNKNOWN
    for value in array.values:
        kind, item = betterproto2.which_one_of(value, "kind")
        if kind in ("", "null_value"):
            parts.append("NULL")
            continue
        if kind == "array_value":
            assert isinstance(item, Array)
            text, inner = _array_text(item, where)
            parts.append(text)
        else:
            text, inner = _scalar(kind, item)
            quoted = kind in ("string_value", "bytes_value", "timestamp_value", "json_value")
            parts.append(_quote(text) if quoted else text)
        if inner != UNKNOWN:
            if element not in (UNKNOWN, inner):
                raise InvalidArgument(f"{where}: an array's values must all be of one kind")
            element = inner
    return "{" + ",".join(parts) + "}", element


def encode_param(value: Value, where: str) -> Param:
    kind, item = betterproto2.which_one_of(value, "kind")
    if kind in ("", "null_value"):
        return None, UNKNOWN, 0
    if kind == "bytes_value":
        assert isinstance(item, bytes)
        return item, BYTEA, 1
    if kind == "array_value":
        assert isinstance(item, Array)
        text, element = _array_text(item, where)
        return text.encode(), _ARRAY_OF.get(element, UNKNOWN), 0
    text, oid = _scalar(kind, item)
    if oid in (TEXT, JSONB):
        oid = UNKNOWN  # typed by its context, like a literal
    if "\x00" in text:
        raise InvalidArgument(f"{where}: PostgreSQL text cannot hold NUL characters")
    return text.encode(), oid, 0


def encode_params(values: Sequence[Value], where: str = "") -> list[Param]:
    return [encode_param(value, f"{where}parameter ${i}") for i, value in enumerate(values, 1)]


# -- rows ---------------------------------------------------------------------------------------

Decoder = Callable[[bytes], Value]


def _string(raw: bytes) -> Value:
    return Value(string_value=raw.decode())


def _bool(raw: bytes) -> Value:
    return Value(bool_value=raw == b"t")


def _int(raw: bytes) -> Value:
    return Value(int64_value=int(raw))


def _float(raw: bytes) -> Value:
    return Value(double_value=float(raw))


def _bytea(raw: bytes) -> Value:
    # Every connection runs with bytea_output=hex.
    return Value(bytes_value=bytes.fromhex(raw[2:].decode()))


def _timestamp(raw: bytes) -> Value:
    text = raw.decode()
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:  # infinity, years beyond 9999, BC: the server's own text
        return Value(string_value=text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return Value(timestamp_value=moment)


def _json(raw: bytes) -> Value:
    return Value(json_value=raw.decode())


_DECODERS: dict[int, Decoder] = {
    BOOL: _bool,
    INT2: _int,
    INT4: _int,
    INT8: _int,
    OID: _int,
    FLOAT4: _float,
    FLOAT8: _float,
    BYTEA: _bytea,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamp,
    JSON: _json,
    JSONB: _json,
}


def _parse_array(text: str) -> list[object]:
    """PostgreSQL's array output (``{1,NULL,"a \\"b\\""}``, nested braces) as nested lists of
    element texts (str) and None for NULL. A ``[1:3]=`` dimension prefix is skipped."""
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    stack: list[list[object]] = []
    result: list[object] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "{":
            stack.append([])
            i += 1
        elif char == "}":
            done = stack.pop()
            if stack:
                stack[-1].append(done)
            else:
                result = done
            i += 1
        elif char == ",":
            i += 1
        elif char == '"':
            i += 1
            chars: list[str] = []
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                chars.append(text[i])
                i += 1
            stack[-1].append("".join(chars))
            i += 1
        else:
            start = i
            while text[i] not in ",}":
                i += 1
            word = text[start:i].strip()
            stack[-1].append(None if word == "NULL" else word)
    return result


def _array_value(items: list[object], element: Decoder) -> Value:
    values: list[Value] = []
    for item in items:
        if item is None:
            values.append(NULL)
        elif isinstance(item, list):
            values.append(_array_value(item, element))
        else:
            assert isinstance(item, str)
            values.append(element(item.encode()))
    return Value(array_value=Array(values=values))


def _array_decoder(element_oid: int) -> Decoder:
    element = _DECODERS.get(element_oid, _string)

    def decode(raw: bytes) -> Value:
        return _array_value(_parse_array(raw.decode()), element)

    return decode


def decoder_for(oid: int) -> Decoder:
    """How a column of type ``oid`` (text format) becomes a Value."""
    decoder = _DECODERS.get(oid)
    if decoder is not None:
        return decoder
    element = _ELEMENT_OF.get(oid)
    if element is not None:
        return _array_decoder(element)
    return _string


def cell(raw: bytes | None, decode: Decoder) -> Value:
    return NULL if raw is None else decode(raw)


def epoch_ms(moment: datetime.datetime) -> int:
    return int((moment - _EPOCH).total_seconds() * 1000)
