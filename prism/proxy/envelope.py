"""The envelope fields the front door reads and answers on, without decoding the payload.

The proxy API and the plugin protocol share field numbers (see ``proxy.proto``): a request's
``operation`` (1) and ``namespace`` (15) are all the proxy reads of it (``prism.protowire``);
the plugin's ``ExecuteResponse`` bytes are the client's response as they are, once its
``success`` / ``error`` / ``error_code`` fields (1, 2, 3) are checked.
"""

from __future__ import annotations

from prism import protowire
from prism.grpc.wire.status import GrpcError, InvalidArgument, PermissionDenied, Status
from prism.sdk.plugin import RESERVED_PREFIX

__all__ = ["check_response", "target"]

_OPERATION, _NAMESPACE = 1, 15
_SUCCESS, _ERROR, _ERROR_CODE = 1, 2, 3
_REQUEST_FIELDS = frozenset({_OPERATION, _NAMESPACE})
_RESPONSE_FIELDS = frozenset({_SUCCESS, _ERROR, _ERROR_CODE})


def target(request: bytes) -> tuple[str, str]:
    """``(namespace, operation)`` of an ExecuteRequest or StreamRequest.

    INVALID_ARGUMENT without a namespace (or for fields that are not text); PERMISSION_DENIED
    for the SDK's reserved operations. The operation may be empty (a stream's later requests).
    """
    fields = protowire.scan(request, _REQUEST_FIELDS)
    namespace = protowire.text(fields.get(_NAMESPACE), "namespace")
    operation = protowire.text(fields.get(_OPERATION), "operation")
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


def check_response(response: bytes) -> bytes:
    """A plugin's ExecuteResponse → the same bytes, or its error as a GrpcError."""
    fields = protowire.scan(response, _RESPONSE_FIELDS)
    if fields.get(_SUCCESS):
        return response
    code = fields.get(_ERROR_CODE)
    message = protowire.text(fields.get(_ERROR), "error")
    status = code if isinstance(code, int) and code != Status.OK else Status.UNKNOWN
    raise GrpcError.for_status(status, message or "the plugin reported a failure")
