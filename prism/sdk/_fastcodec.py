"""Fast encoders and decoders for the data model's messages, byte for byte betterproto2's.

betterproto2 spends ~28 µs per small nested message: a 100-key ``GetManyResponse`` took
~2.8 ms to encode and a 100-key ``GetManyRequest`` ~0.6 ms to decode on the development
machine, twenty times what the backend itself needs for the read (one Redis MGET: ~0.1 ms);
even a one-field ``GetRequest`` took ~15 µs to decode, more than the rest of an in-process
plugin call. So:

- **flat** messages, every field a singular ``string``, ``bytes``, ``bool``, ``int64`` or
  ``int32`` (``GetRequest``, ``SetRequest``, ``SetResponse``, ``DeleteRequest``, ... and a
  plugin's own messages of that shape), are read and written from their betterproto2 field
  metadata by the two generic functions below (:func:`_flat_decode`, :func:`_flat_encode`);
- the bulk messages (``GetManyResponse``, ``GetManyRequest``) have hand-written ones, and so
  does the ``sql`` contract's ``ExecuteStatementRequest``, whose ``batch`` of parameter rows
  is thousands of nested ``Row``/``Value`` messages (a 1000-row batch: ~110 ms in betterproto2
  on the development machine under load; its ``Value`` kinds but ``timestamp_value``, which
  stays betterproto2's);
- every other message stays betterproto2's, and so does any message holding unknown fields,
  or bytes a fast decoder finds unusual (a field of an unknown number or another wire type:
  betterproto2 then decides, as before).

The bytes are betterproto2's (tests/sdk/test_sdk_fastcodec.py compares both directions with
hypothesis). Decoders read bytes :mod:`prism.grpc.protocheck` has accepted (framing, UTF-8,
nesting): strictness is protocheck's, not theirs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import betterproto2

from prism import protowire
from prism._proto.google.protobuf import NullValue
from prism._proto.prism.data.v1 import (
    Array,
    ExecuteStatementRequest,
    GetManyRequest,
    GetManyResponse,
    GetResponse,
    Row,
    Value,
)
from prism.grpc import protocheck

__all__ = ["decode", "decode_checked", "encode", "varint"]

_SMALL = [bytes((n,)) for n in range(128)]  # one-byte varints


def varint(value: int) -> bytes:
    """``protowire.encode_varint``, without a new bytes object for values below 128."""
    return _SMALL[value] if 0 <= value < 128 else protowire.encode_varint(value)


_varint = varint


#: A field's tag and one-byte length, for lengths below 128: ``GetResponse.value`` (2),
#: ``.etag`` (3), ``GetManyResponse.items`` (1); and ``ttl_remaining_ms`` (4) below 128.
_VALUE_HEAD = [b"\x12" + b for b in _SMALL]
_ETAG_HEAD = [b"\x1a" + b for b in _SMALL]
_ITEM_HEAD = [b"\x0a" + b for b in _SMALL]
_TTL_FIELD = [b"\x20" + b for b in _SMALL]


def _get_response(message: GetResponse) -> bytes:
    """One bytes object built by concatenation from the tables above: a 100-item
    ``GetManyResponse`` is 100 of these, and a bytearray per item cost more."""
    encode_varint = protowire.encode_varint
    value = message.value
    etag = message.etag
    ttl = message.ttl_remaining_ms
    body = b"\x08\x01" if message.found else b""
    if value:
        n = len(value)
        body += (_VALUE_HEAD[n] if n < 128 else b"\x12" + encode_varint(n)) + value
    if etag:
        raw = etag.encode()
        n = len(raw)
        body += (_ETAG_HEAD[n] if n < 128 else b"\x1a" + encode_varint(n)) + raw
    if ttl is not None:
        body += _TTL_FIELD[ttl] if 0 <= ttl < 128 else b"\x20" + encode_varint(ttl)
    return body


def _get_many_response(message: GetManyResponse) -> bytes | None:
    out = bytearray()
    encode_varint = protowire.encode_varint
    for item in message.items:
        if type(item) is not GetResponse or item._unknown_fields:
            return None
        body = _get_response(item)
        n = len(body)
        out += _ITEM_HEAD[n] if n < 128 else b"\x0a" + encode_varint(n)
        out += body
    return bytes(out)


_ENCODERS: dict[type, Callable[[Any], bytes | None]] = {
    GetResponse: _get_response,
    GetManyResponse: _get_many_response,
}


def encode(message: betterproto2.Message) -> bytes:
    """``bytes(message)``, faster for the messages above."""
    cls = type(message)
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        encoder = _ENCODERS[cls] = _flat_encoder(cls)
    if not message._unknown_fields:
        encoded = encoder(message)
        if encoded is not None:
            return encoded
    return bytes(message)


# -- flat messages --------------------------------------------------------------------------

_STRING, _BYTES, _BOOL, _INT64, _INT32 = "string", "bytes", "bool", "int64", "int32"
_VARINT_KINDS = frozenset({_BOOL, _INT64, _INT32})
#: One field of a flat message: (number, attribute, proto type, proto3 ``optional``).
_Field = tuple[int, str, str, bool]


def _flat_fields(cls: type[betterproto2.Message]) -> list[_Field] | None:
    """The fields of ``cls`` in declaration order (betterproto2's encoding order), or None
    unless every one is a singular scalar of the kinds above."""
    meta = getattr(cls, "_betterproto", None)
    if meta is None:
        return None
    out = []
    for name, field in meta.meta_by_field_name.items():
        kind = field.proto_type
        if (
            kind not in (_STRING, _BYTES, _BOOL, _INT64, _INT32)
            or field.repeated
            or field.map_meta is not None
            or field.group is not None
            or field.unwrap is not None
        ):
            return None
        out.append((field.number, name, kind, bool(field.optional)))
    return out


def _no_encoder(message: Any) -> None:
    return None


def _flat_encoder(cls: type[betterproto2.Message]) -> Callable[[Any], bytes | None]:
    fields = _flat_fields(cls)
    if fields is None:
        return _no_encoder
    plan = [
        (name, bytes(((number << 3) | (0 if kind in _VARINT_KINDS else 2),)), kind, optional)
        for number, name, kind, optional in fields
        if number < 16  # a one-byte tag; larger numbers are rare enough for betterproto2
    ]
    if len(plan) != len(fields):
        return _no_encoder

    def flat_encode(message: Any) -> bytes:
        out = bytearray()
        for name, tag, kind, optional in plan:
            value = getattr(message, name)
            if optional:
                if value is None:
                    continue
            elif not value:  # proto3: a default value is not written
                continue
            out += tag
            if kind == _STRING:
                raw = value.encode()
                out += _varint(len(raw))
                out += raw
            elif kind == _BYTES:
                out += _varint(len(value))
                out += value
            elif kind == _BOOL:
                out += b"\x01" if value else b"\x00"
            else:
                out += protowire.encode_varint(value)
        return bytes(out)

    return flat_encode


def _get_many_request(data: bytes) -> GetManyRequest | None:
    """Field 1 (string) repeated, nothing else; None (betterproto2 decides) for anything
    unusual. protocheck has already checked the framing and the UTF-8."""
    keys = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] != 0x0A:
            return None
        length = data[pos + 1]
        pos += 2
        if length >= 0x80:  # a key of 128 bytes or more: a multi-byte length
            return None
        keys.append(data[pos : pos + length].decode())
        pos += length
    return GetManyRequest(keys=keys)


def _get_many_request_checked(data: bytes) -> GetManyRequest | None:
    """:func:`_get_many_request` that is also protocheck's check, for the common shape: every
    byte ASCII (so every key is valid UTF-8, and a character index is a byte index), each key
    shorter than 128 bytes, the last one ending where the bytes do. Such bytes are well framed
    and hold only valid strings of field 1, which protocheck accepts as they are; anything
    else (None) goes through protocheck and then the decoders above. The keys are cut from one
    decoded string: no decode per key (a 100-key request: check + decode ~95 → ~25 µs)."""
    if type(data) is not bytes or not data.isascii():
        return None
    text = data.decode("ascii")
    keys: list[str] = []
    append = keys.append
    pos, end = 0, len(data)
    while pos < end:
        # An ASCII length byte is below 0x80: one byte, never a multi-byte varint.
        if data[pos] != 0x0A or pos + 1 == end:
            return None
        start = pos + 2
        pos = start + data[pos + 1]
        append(text[start:pos])
    if pos != end:  # the last key runs past the end: truncated, protocheck's to report
        return None
    return GetManyRequest(keys=keys)


#: Decoders that are their own strictness check: for bytes they accept, protocheck accepts
#: the same bytes unchanged and they read them as betterproto2 would; None sends the bytes
#: through protocheck and :func:`decode` (tests/sdk/test_sdk_fastcodec.py checks both claims).
_CHECKED_DECODERS: dict[type, Callable[[bytes], Any]] = {
    GetManyRequest: _get_many_request_checked,
}


def decode_checked(cls: type[betterproto2.Message], data: bytes) -> Any:
    """``protocheck.check`` and :func:`decode` in one pass where a message has a decoder that
    is its own check; None when it has none or the bytes are not its fast shape."""
    decoder = _CHECKED_DECODERS.get(cls)
    return None if decoder is None else decoder(data)


_MASK64, _SIGN64, _MASK32, _SIGN32 = (1 << 64) - 1, 1 << 63, (1 << 32) - 1, 1 << 31


def _no_decoder(data: bytes) -> None:
    return None


def _flat_decoder(cls: type[betterproto2.Message]) -> Callable[[bytes], Any]:
    fields = _flat_fields(cls)
    if fields is None:
        return _no_decoder
    # key (tag) → (attribute, kind): only the wire type each field has; anything else is
    # betterproto2's to decide.
    by_key = {
        (number << 3) | (0 if kind in _VARINT_KINDS else 2): (name, kind)
        for number, name, kind, _ in fields
    }

    def flat_decode(data: bytes) -> Any:
        values: dict[str, Any] = {}
        pos, end = 0, len(data)
        read_varint = protocheck.read_varint
        while pos < end:
            key = data[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = read_varint(data, pos, end)
            field = by_key.get(key)
            if field is None:
                return None
            name, kind = field
            if key & 7:  # length-delimited
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = read_varint(data, pos, end)
                raw = data[pos : pos + length]
                pos += length
                values[name] = raw.decode() if kind == _STRING else raw
                continue
            value = data[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = read_varint(data, pos, end)
            if kind == _BOOL:
                values[name] = value > 0
            elif kind == _INT64:
                value &= _MASK64
                values[name] = (value ^ _SIGN64) - _SIGN64
            else:
                value &= _MASK32
                values[name] = (value ^ _SIGN32) - _SIGN32
        return cls(**values)

    return flat_decode


# -- the sql contract's ExecuteStatementRequest --------------------------------------------


class _Unusual(Exception):
    """Bytes the fast decoder leaves to betterproto2 (it decides, as before)."""


_DOUBLE = struct.Struct("<d")
_NULL = NullValue.NULL_VALUE
#: Value's scalar members by key (field number << 3 | wire type).
_VALUE_VARINTS = {0x08: "null_value", 0x10: "bool_value", 0x18: "int64_value"}
_VALUE_TEXTS = {0x2A: "string_value", 0x42: "json_value"}


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    length = data[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = protocheck.read_varint(data, pos, end)
    if pos + length > end:
        raise _Unusual
    return length, pos


def _values(data: bytes, pos: int, end: int) -> list[Value]:
    """The repeated Value of field 1 (a Row's or an Array's ``values``) in data[pos:end]."""
    out = []
    while pos < end:
        if data[pos] != 0x0A:
            raise _Unusual
        length, pos = _length(data, pos + 1, end)
        out.append(_value(data, pos, pos + length))
        pos += length
    return out


def _value(data: bytes, pos: int, end: int) -> Value:
    if pos == end:
        return Value()
    key = data[pos]
    pos += 1
    if key in _VALUE_VARINTS:
        number, pos = protocheck.read_varint(data, pos, end)
        name = _VALUE_VARINTS[key]
        if pos != end:
            raise _Unusual  # another field after it: betterproto2's rules decide
        if name == "int64_value":
            number &= _MASK64
            return Value(int64_value=(number ^ _SIGN64) - _SIGN64)
        if name == "bool_value":
            return Value(bool_value=number > 0)
        if number != 0:
            raise _Unusual
        return Value(null_value=_NULL)
    if key == 0x21:  # double_value, fixed64
        if pos + 8 != end:
            raise _Unusual
        return Value(double_value=_DOUBLE.unpack_from(data, pos)[0])
    if key not in (0x2A, 0x32, 0x42, 0x4A):  # strings, bytes, arrays; timestamps: not here
        raise _Unusual
    length, pos = _length(data, pos, end)
    if pos + length != end:
        raise _Unusual
    if key == 0x32:
        return Value(bytes_value=data[pos:end])
    if key == 0x4A:
        return Value(array_value=Array(values=_values(data, pos, end)))
    try:
        text = data[pos:end].decode()
    except UnicodeDecodeError:
        raise _Unusual from None
    return Value(**{_VALUE_TEXTS[key]: text})


def _execute_statement_request(data: bytes) -> ExecuteStatementRequest | None:
    """Fields 1 (sql, once), 2 (params) and 3 (batch of Rows); None for anything else."""
    sql: str | None = None
    params: list[Value] = []
    batch: list[Row] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            key = data[pos]
            length, pos = _length(data, pos + 1, end)
            stop = pos + length
            if key == 0x1A:
                batch.append(Row(values=_values(data, pos, stop)))
            elif key == 0x12:
                params.append(_value(data, pos, stop))
            elif key == 0x0A and sql is None:
                sql = data[pos:stop].decode()
            else:
                return None
            pos = stop
    except (_Unusual, UnicodeDecodeError, IndexError, ValueError):
        return None
    return ExecuteStatementRequest(sql=sql or "", params=params, batch=batch)


_DECODERS: dict[type, Callable[[bytes], Any]] = {
    GetManyRequest: _get_many_request,
    ExecuteStatementRequest: _execute_statement_request,
}


def decode(cls: type[betterproto2.Message], data: bytes) -> Any:
    """``cls.parse(data)`` for bytes protocheck has accepted, faster for the messages above."""
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = _flat_decoder(cls)
    decoded = decoder(data)
    if decoded is not None:
        return decoded
    return cls.parse(data)
