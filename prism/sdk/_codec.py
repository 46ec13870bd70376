"""Payloads between the RFC's messages and an operation's declared types.

A payload is a generated message (``typed_params`` / ``typed_result``: an ``Any``) or ``bytes``
(``raw_params`` / ``raw_result``: no decoding). Every mismatch between what came and what the
operation declared is ``InvalidArgument`` naming both; a handler returning the wrong type is the
plugin's bug: ``Internal``.
"""

from __future__ import annotations

from typing import cast

import betterproto2

from prism._proto.google.protobuf import Any
from prism._proto.prism.plugin.v1 import ExecuteResponse, StreamResponse
from prism.grpc.wire.status import Internal, InvalidArgument
from prism.sdk.plugin import OperationSpec, Payload
from prism.sdk.shared import SharedResult
from prism.sdk.typed import pack, type_name, unpack

__all__ = [
    "check_payload",
    "check_result",
    "check_stream_result",
    "decode",
    "decode_params",
    "encode_result",
    "encode_stream_result",
]


def _describe(spec: OperationSpec, expected: type | None) -> str:
    if expected is bytes:
        return "raw bytes (raw_params)"
    return f"typed_params {spec.kind(expected)}"


def decode(
    spec: OperationSpec, message: betterproto2.Message, expected: type | None, what: str
) -> Payload:
    """The ``params`` oneof of an ExecuteRequest / StreamRequest, as ``expected``.

    ``what`` names the payload in errors ("params", "request").
    """
    field, value = betterproto2.which_one_of(message, "params")
    return decode_params(spec, field, value, expected, what)


def decode_params(
    spec: OperationSpec, field: str, value: object, expected: type | None, what: str
) -> Payload:
    """``decode`` for a ``params`` member already taken apart: ``field`` is "typed_params"
    (``value`` an ``Any``), "raw_params" (bytes) or "" (none came)."""
    where = f"operation {spec.name!r}"
    if expected is None:
        raise InvalidArgument(f"{where} takes no {what}s after the first request")
    if expected is bytes:
        if field == "typed_params":
            assert isinstance(value, Any)
            got = value.type_url or "an empty Any"
            raise InvalidArgument(f"{where} expects {what} as raw bytes (raw_params), got {got}")
        # An absent payload is the empty byte string, as proto3 reads an absent bytes field.
        return value if isinstance(value, bytes) else b""
    if field == "raw_params":
        raise InvalidArgument(f"{where} expects {what} {_describe(spec, expected)}, got raw bytes")
    try:
        return unpack(value if type(value) is Any else None, expected)  # not an ABC check
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where} {what}: {exc.message}") from None


def check_payload(spec: OperationSpec, value: object, expected: type | None, what: str) -> Payload:
    """The typed (in-process) path's counterpart of ``decode``: check a payload's type."""
    where = f"operation {spec.name!r}"
    if expected is None:
        raise InvalidArgument(f"{where} takes no {what}s after the first request")
    if type(value) is expected:
        assert isinstance(value, bytes | betterproto2.Message)
        return value
    got = _payload_name(value)
    raise InvalidArgument(f"{where} expects {what} {spec.kind(expected)}, got {got}")


def check_result(spec: OperationSpec, result: object) -> Payload:
    if type(result) is spec.result:  # a declared result type: bytes or a message
        return cast(Payload, result)
    raise Internal(
        f"operation {spec.name!r} returned {_payload_name(result)}, "
        f"but declares {spec.kind(spec.result)}"
    )


def check_stream_result(spec: OperationSpec, result: object) -> Payload | SharedResult:
    """``check_result`` for what a stream handler sends: a result, or a ``SharedResult`` of
    one (checked by its value)."""
    value = result.value if isinstance(result, SharedResult) else result
    if type(value) is spec.result:
        assert isinstance(result, bytes | betterproto2.Message | SharedResult)
        return result
    raise Internal(
        f"operation {spec.name!r} sent {_payload_name(value)}, "
        f"but declares {spec.kind(spec.result)}"
    )


def _payload_name(value: object) -> str:
    if isinstance(value, bytes):
        return "raw bytes"
    if isinstance(value, betterproto2.Message):
        try:
            return type_name(pack(value).type_url)
        except TypeError:
            pass
    return type(value).__qualname__


def encode_result(result: Payload) -> ExecuteResponse:
    # A fresh message per response: betterproto2 does not clear one oneof member when the
    # other is set.
    if isinstance(result, bytes):
        return ExecuteResponse(success=True, raw_result=result)
    return ExecuteResponse(success=True, typed_result=pack(result))


def encode_stream_result(result: Payload) -> StreamResponse:
    if isinstance(result, bytes):
        return StreamResponse(raw_result=result)
    return StreamResponse(typed_result=pack(result))
