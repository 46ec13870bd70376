"""The envelope fields the front door reads and answers on, without decoding the payload.

The proxy API and the plugin protocol share field numbers (see ``proxy.proto``): a request's
``operation`` (1) and ``namespace`` (15) are all the proxy reads of it (``prism.protowire``);
the plugin's ``ExecuteResponse`` bytes are the client's response as they are, once its
``success`` / ``error`` / ``error_code`` fields (1, 2, 3) are checked.
"""

from __future__ import annotations

from prism import protowire
from prism.grpc.protocheck import read_varint
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, InvalidArgument, PermissionDenied, Status
from prism.sdk.plugin import RESERVED_PREFIX

__all__ = ["check_response", "target"]

_OPERATION, _NAMESPACE = 1, 15
_SUCCESS, _ERROR, _ERROR_CODE = 1, 2, 3
_TARGET = frozenset({_OPERATION, _NAMESPACE})
_RESPONSE_FIELDS = frozenset({_SUCCESS, _ERROR, _ERROR_CODE})
#: The tags of ``typed_result`` (4) and ``raw_result`` (5), length-delimited.
_RESULTS = frozenset({4 << 3 | 2, 5 << 3 | 2})


def target(request: bytes) -> tuple[str, str]:
    """``(namespace, operation)`` of an ExecuteRequest or StreamRequest.

    INVALID_ARGUMENT without a namespace (or for fields that are not text); PERMISSION_DENIED
    for the SDK's reserved operations. The operation may be empty (a stream's later requests).
    """
    raw_namespace = raw_operation = None
    # protowire.scan, without its dict; the payload (params) is skipped, never sliced out.
    for number, value in protowire.fields(request, only=_TARGET):
        if value is None:
            continue
        if number == _NAMESPACE:
            raw_namespace = value
        elif number == _OPERATION:
            raw_operation = value
    namespace = protowire.text(raw_namespace, "namespace")
    operation = protowire.text(raw_operation, "operation")
    if not namespace:
        raise InvalidArgument("namespace is required")
    if operation.startswith(RESERVED_PREFIX):
        # The SDK's own operations (``_prism.metrics`` fetches *and resets* a plugin's interval
        # counters) are for the plugin host, which calls them on its own channel, never through
        # here: a client calling one would steal the host's metrics.
        raise PermissionDenied(
            f"operation {operation!r} is reserved for the proxy ({RESERVED_PREFIX}*)"
        )
    return namespace, operation


def check_response(response: bytes | Pieces) -> bytes | Pieces:
    """A plugin's ExecuteResponse → the same bytes, or its error as a GrpcError. An in-process
    plugin's large raw result comes as :class:`Pieces` (the SDK's ``execute_reply``: a success,
    its fields in the head) and goes on as it is."""
    if isinstance(response, Pieces):
        if response.head[:2] == b"\x08\x01":
            return response
        return check_response(bytes(response))
    end = len(response)
    if end > 3 and response[0] == 0x08 and response[1] == 0x01 and response[2] in _RESULTS:
        # A success as the SDK writes it (``_envelope.execute_result``): ``success`` true, then
        # one result field running exactly to the end, so no other field can follow.
        try:
            length, pos = read_varint(response, 3, end)
        except ValueError:
            pass
        else:
            if pos + length == end:
                return response
    fields = protowire.scan(response, _RESPONSE_FIELDS)
    if fields.get(_SUCCESS):
        return response
    code = fields.get(_ERROR_CODE)
    message = protowire.text(fields.get(_ERROR), "error")
    status = code if isinstance(code, int) and code != Status.OK else Status.UNKNOWN
    raise GrpcError.for_status(status, message or "the plugin reported a failure")
