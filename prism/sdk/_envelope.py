"""The RFC's Execute envelopes read and written without betterproto2.

Every Execute a plugin serves arrives as an ``ExecuteRequest`` and leaves as an
``ExecuteResponse``. Decoding the one and encoding the other through betterproto2 cost ~30 µs per
call on this machine (~60 µs in a process woken for each call), more than a sidecar hop's whole
budget; the envelopes have five fields between them, so they are read and written here
(:mod:`prism.protowire`) and only the payload inside, of the operation's own type, goes through
betterproto2. The bytes are the ones betterproto2 reads and writes (tests/sdk/test_sdk_envelope.py
checks both directions).

``ExecuteRequest``: operation (1), ``params`` oneof: typed_params (2, an ``Any``: type_url 1,
value 2) or raw_params (3); metadata (4, map entries: key 1, value 2). Fields the plugin protocol
does not define (the proxy API's namespace, 15) are skipped, as a decoder skips them.
``StreamRequest`` has the same four fields (its metadata is read from a stream's first
request only: the trace context the proxy adds); ``StreamResponse``:
``result`` oneof typed_result (1) or raw_result (2), is_final (3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import betterproto2

from prism import protowire
from prism._proto.google.protobuf import Any
from prism.grpc import protocheck
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError
from prism.sdk import _fastcodec
from prism.sdk.plugin import Payload
from prism.sdk.typed import type_url

__all__ = [
    "STREAM_FINAL",
    "ExecuteEnvelope",
    "execute_error",
    "execute_reply",
    "execute_result",
    "read_execute",
    "read_stream_request",
    "stream_reply",
    "stream_result",
]


@dataclass(slots=True)
class ExecuteEnvelope:
    operation: str = ""
    #: Which ``params`` member came: "typed_params" (``params`` is an ``Any``), "raw_params"
    #: (bytes) or "" (none; ``params`` is None).
    params_field: str = ""
    params: Any | bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_execute(data: bytes) -> ExecuteEnvelope:
    """An encoded ``ExecuteRequest``; raises ``InvalidArgument`` for what protobuf's reference
    parser rejects. A field with another wire type than its own is unknown, as upb has it."""
    return _read_request(data, metadata=True)


def read_stream_request(data: bytes, *, metadata: bool = False) -> ExecuteEnvelope:
    """An encoded ``StreamRequest``, read as ``read_execute`` reads an ``ExecuteRequest``;
    its ``metadata`` only with ``metadata=True`` (a stream's first request: later ones'
    metadata means nothing, and is not spent time on)."""
    return _read_request(data, metadata=metadata)


def _read_request(data: bytes, *, metadata: bool) -> ExecuteEnvelope:
    envelope = ExecuteEnvelope()
    for number, value in protowire.fields(data):
        if type(value) is not bytes:
            continue  # every field read here is length-delimited
        if number == 1:
            envelope.operation = protowire.text(value, "operation")
        elif number == 2:
            # A message field seen again is merged into the first (protobuf's rule), unless
            # the other oneof member came in between.
            # (``type() is``: isinstance on a betterproto2 message is an ABC check, slow.)
            previous = envelope.params if type(envelope.params) is Any else None
            envelope.params = _read_any(value, previous)
            envelope.params_field = "typed_params"
        elif number == 3:
            envelope.params = value
            envelope.params_field = "raw_params"
        elif number == 4 and metadata:
            entry = _read_entry(value)
            if entry is not None:
                envelope.metadata[entry[0]] = entry[1]
    return envelope


_NESTED = protocheck.MAX_DEPTH - 1  # what a message inside the envelope may still nest


def _read_any(data: bytes, into: Any | None) -> Any:
    message = into if into is not None else Any()
    for number, value in protowire.fields(data, _NESTED):
        if type(value) is not bytes:
            continue
        if number == 1:
            message.type_url = protowire.text(value, "typed_params.type_url")
        elif number == 2:
            message.value = value
    return message


def _read_entry(data: bytes) -> tuple[str, str] | None:
    """A map entry's key and value; None for an entry holding any other field, which upb
    keeps out of the map (as an unknown field of the envelope)."""
    key = value = ""
    clean = True
    for number, raw in protowire.fields(data, _NESTED):
        if type(raw) is not bytes:
            clean = False
        elif number == 1:
            key = protowire.text(raw, "metadata key")
        elif number == 2:
            value = protowire.text(raw, "metadata value")
        else:
            clean = False
    return (key, value) if clean else None


# ``success`` (1) true, then the tag of ``raw_result`` (5) or of ``typed_result`` (4).
_SUCCESS_RAW = protowire.varint_field(1, 1) + b"\x2a"
_SUCCESS_TYPED = protowire.varint_field(1, 1) + b"\x22"
_ANY_VALUE = b"\x12"  # Any.value (2)
_varint = _fastcodec.varint

#: The encoded ``type_url`` field of each result type seen (the URL never changes).
_URL_FIELDS: dict[type, bytes] = {}


def _url_field(cls: type) -> bytes:
    url = _URL_FIELDS.get(cls)
    if url is None:
        url = _URL_FIELDS[cls] = protowire.length_delimited(1, type_url(cls).encode())
    return url


def _any_bytes(message: betterproto2.Message) -> bytes:
    """``pack(message)``, encoded."""
    body = _fastcodec.encode(message)
    url = _url_field(type(message))
    if not body:
        return url
    return b"".join((url, _ANY_VALUE, _varint(len(body)), body))


def execute_result(result: Payload) -> bytes:
    """``ExecuteResponse(success=True, typed_result=pack(result))``, or ``raw_result`` for
    bytes, encoded (in one join: no intermediate copies of the result)."""
    if isinstance(result, bytes):
        return b"".join((_SUCCESS_RAW, _varint(len(result)), result))
    body = _fastcodec.encode(result)
    url = _url_field(type(result))
    if not body:
        return b"".join((_SUCCESS_TYPED, _varint(len(url)), url))
    size = _varint(len(body))
    any_length = len(url) + 1 + len(size) + len(body)
    return b"".join((_SUCCESS_TYPED, _varint(any_length), url, _ANY_VALUE, size, body))


#: Raw results larger than this are sent behind their envelope's fields, not joined to them.
PIECES_FROM = 1 << 16


def execute_reply(result: Payload) -> bytes | Pieces:
    """:func:`execute_result`, with a large ``raw_result`` as :class:`Pieces`: the envelope's
    fields, then the plugin's bytes as they are (sent without being copied behind them)."""
    if type(result) is bytes and len(result) > PIECES_FROM:
        return Pieces(_SUCCESS_RAW + _varint(len(result)), result)
    return execute_result(result)


def stream_reply(result: Payload) -> bytes | Pieces:
    """:func:`stream_result`, with a large ``raw_result`` as :class:`Pieces` (see
    :func:`execute_reply`)."""
    if type(result) is bytes and len(result) > PIECES_FROM:
        return Pieces(b"\x12" + _varint(len(result)), result)
    return stream_result(result)


#: ``StreamResponse(is_final=True)``, encoded: the end of a stream that succeeded.
STREAM_FINAL = protowire.varint_field(3, 1)


def stream_result(result: Payload) -> bytes:
    """``StreamResponse(typed_result=pack(result))``, or ``raw_result`` for bytes, encoded."""
    if isinstance(result, bytes):
        return protowire.length_delimited(2, result)
    return protowire.length_delimited(1, _any_bytes(result))


def execute_error(error: GrpcError) -> bytes:
    """``ExecuteResponse(success=False, error=message, error_code=status)``, encoded."""
    out = b""
    if error.message:
        out += protowire.length_delimited(2, error.message.encode())
    if error.status:
        out += protowire.varint_field(3, int(error.status))
    return out
