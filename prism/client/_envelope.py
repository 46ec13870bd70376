"""The client side of ``prism.proxy.v1``'s envelopes, written and read field by field.

``ExecuteRequest`` and ``StreamRequest`` are a handful of top-level fields around the params;
encoding them by hand (and reading ``ExecuteResponse``/``StreamResponse`` with
:mod:`prism.protowire`) spares a betterproto2 encode and decode of the envelope on every call.
The params and results themselves are betterproto2 messages inside ``google.protobuf.Any``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import betterproto2

from prism import protowire
from prism.grpc import protocheck
from prism.grpc.wire.status import GrpcError, Internal

__all__ = [
    "EXECUTE",
    "EXECUTE_STREAM",
    "Params",
    "decode_result",
    "decode_stream_response",
    "encode_request",
    "type_url",
]

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"

#: An operation's params: a message (sent as ``typed_params``), raw bytes (``raw_params``) or
#: nothing.
Params = betterproto2.Message | bytes | None

R = TypeVar("R")

# Field numbers of prism.proxy.v1 (protos/prism/proxy/v1/proxy.proto).
_OPERATION, _TYPED_PARAMS, _RAW_PARAMS, _METADATA, _NAMESPACE = 1, 2, 3, 4, 15
_EXECUTE_TYPED, _EXECUTE_RAW = 4, 5
_STREAM_TYPED, _STREAM_RAW, _STREAM_FINAL = 1, 2, 3
_EXECUTE_FIELDS = frozenset({_EXECUTE_TYPED, _EXECUTE_RAW})
_STREAM_FIELDS = frozenset({_STREAM_TYPED, _STREAM_RAW, _STREAM_FINAL})
_ANY_FIELDS = frozenset({1, 2})


def type_url(cls: type[betterproto2.Message]) -> str:
    """``type.googleapis.com/<full.Name>`` of a betterproto2-generated message class (from its
    own package's message pool, so plugins' messages work as the core's do)."""
    pool = getattr(sys.modules.get(cls.__module__), "default_message_pool", None)
    url = pool.type_to_url.get(cls) if isinstance(pool, betterproto2.MessagePool) else None
    if not isinstance(url, str):
        raise TypeError(f"{cls.__qualname__} is not a message of a betterproto2-generated package")
    return url


def _text(number: int, value: str) -> bytes:
    return protowire.length_delimited(number, value.encode()) if value else b""


def encode_request(
    namespace: str,
    operation: str,
    params: Params,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """An ``ExecuteRequest`` (or, without ``metadata``, a ``StreamRequest``: the same fields).
    An empty ``namespace`` or ``operation`` is left out (later requests of a stream)."""
    parts = [_text(_OPERATION, operation)]
    if isinstance(params, bytes):
        parts.append(protowire.length_delimited(_RAW_PARAMS, params))
    elif params is not None:
        packed = _text(1, type_url(type(params))) + _bytes_field(2, bytes(params))
        parts.append(protowire.length_delimited(_TYPED_PARAMS, packed))
    for key, value in (metadata or {}).items():
        entry = _text(1, key) + _text(2, value)
        parts.append(protowire.length_delimited(_METADATA, entry))
    parts.append(_text(_NAMESPACE, namespace))
    return b"".join(parts)


def _bytes_field(number: int, value: bytes) -> bytes:
    return protowire.length_delimited(number, value) if value else b""


def _malformed(what: str, exc: GrpcError) -> Internal:
    return Internal(f"the proxy sent a malformed {what}: {exc.message}")


def _unpack(typed: bytes, result_type: type[R]) -> R:
    """The message in an ``Any``'s bytes, which must hold ``result_type``."""
    try:
        fields = protowire.scan(typed, _ANY_FIELDS)
        url = protowire.text(fields.get(1), "type_url")
        value = protowire.blob(fields.get(2), "value")
    except GrpcError as exc:
        raise _malformed("result", exc) from None
    if result_type is bytes:
        raise Internal(f"expected a raw result, got a typed {url.rpartition('/')[2]}")
    cls = cast(type[betterproto2.Message], result_type)
    expected = type_url(cls).rpartition("/")[2]
    if url.rpartition("/")[2] != expected:
        raise Internal(f"expected a result of type {expected}, got {url or 'no type'}")
    try:
        return cast(R, cls.parse(protocheck.check(cls, value)))
    except GrpcError as exc:
        raise _malformed(expected, exc) from None
    except Exception:
        raise Internal(f"the proxy sent a {expected} that does not decode") from None


def _result(typed: Any, raw: Any, result_type: type[R]) -> R:
    if isinstance(typed, bytes):
        return _unpack(typed, result_type)
    if isinstance(raw, bytes):
        if result_type is not bytes:
            expected = type_url(cast(type[betterproto2.Message], result_type))
            raise Internal(
                f"expected a result of type {expected.rpartition('/')[2]}, got raw bytes"
            )
        return cast(R, raw)
    if result_type is bytes:
        return cast(R, b"")  # an empty raw result is left out on the wire
    raise Internal("the proxy sent no result")


def decode_result(response: bytes, result_type: type[R]) -> R:
    """The result in an ``ExecuteResponse``'s bytes, as ``result_type`` (a message class, or
    ``bytes`` for a raw result). Raises ``Internal`` for anything else."""
    try:
        fields = protowire.scan(response, _EXECUTE_FIELDS)
    except GrpcError as exc:
        raise _malformed("ExecuteResponse", exc) from None
    return _result(fields.get(_EXECUTE_TYPED), fields.get(_EXECUTE_RAW), result_type)


def decode_stream_response(response: bytes, result_type: type[R]) -> tuple[R | None, bool]:
    """``(result or None, is_final)`` of a ``StreamResponse``'s bytes."""
    try:
        fields = protowire.scan(response, _STREAM_FIELDS)
    except GrpcError as exc:
        raise _malformed("StreamResponse", exc) from None
    typed, raw = fields.get(_STREAM_TYPED), fields.get(_STREAM_RAW)
    final = bool(fields.get(_STREAM_FINAL))
    if typed is None and raw is None:
        return None, final
    return _result(typed, raw, result_type), final
