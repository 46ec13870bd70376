"""gRPC status codes and the errors that carry them.

Every error raised inside the stack carries the status it maps to, the way h2's errors carry
an ``error_code``: the one boundary per RPC turns a :class:`GrpcError` into trailers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from prism.grpc.wire.metadata import Metadata


class Status(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """An RPC ended with a non-OK status. Subclasses fix the status; this class takes any."""

    status: Status = Status.UNKNOWN

    def __init__(
        self,
        message: str = "",
        *,
        status: Status | None = None,
        trailers: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = Status(status)
        self.message = message
        self.trailers: Metadata = list(trailers)

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}" if self.message else self.status.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status.name})"

    @classmethod
    def for_status(
        cls,
        status: Status | int,
        message: str = "",
        trailers: Sequence[tuple[str, str | bytes]] = (),
    ) -> GrpcError:
        """The most specific error class for ``status`` (unknown codes become UNKNOWN)."""
        try:
            code = Status(status)
        except ValueError:
            return GrpcError(
                f"unknown status {status}: {message}", status=Status.UNKNOWN, trailers=trailers
            )
        return _BY_STATUS.get(code, GrpcError)(message, status=code, trailers=trailers)


class Cancelled(GrpcError):
    status = Status.CANCELLED


class Unknown(GrpcError):
    status = Status.UNKNOWN


class InvalidArgument(GrpcError):
    status = Status.INVALID_ARGUMENT


class DeadlineExceeded(GrpcError):
    status = Status.DEADLINE_EXCEEDED


class NotFound(GrpcError):
    status = Status.NOT_FOUND


class AlreadyExists(GrpcError):
    status = Status.ALREADY_EXISTS


class PermissionDenied(GrpcError):
    status = Status.PERMISSION_DENIED


class ResourceExhausted(GrpcError):
    status = Status.RESOURCE_EXHAUSTED


class FailedPrecondition(GrpcError):
    status = Status.FAILED_PRECONDITION


class Aborted(GrpcError):
    status = Status.ABORTED


class OutOfRange(GrpcError):
    status = Status.OUT_OF_RANGE


class Unimplemented(GrpcError):
    status = Status.UNIMPLEMENTED


class Internal(GrpcError):
    status = Status.INTERNAL


class Unavailable(GrpcError):
    status = Status.UNAVAILABLE


class DataLoss(GrpcError):
    status = Status.DATA_LOSS


class Unauthenticated(GrpcError):
    status = Status.UNAUTHENTICATED


_BY_STATUS: dict[Status, type[GrpcError]] = {
    cls.status: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encode_grpc_message(message: str) -> str:
    """Percent-encode ``grpc-message`` (UTF-8, then every byte outside 0x20-0x7E and '%').

    A space at either end is encoded too: HTTP/2 forbids a field value that starts or ends with
    whitespace (h2 strips it on send and rejects it on receipt).
    """
    # Lone surrogates (a path decoded with surrogateescape, say) cannot be UTF-8: send them
    # escaped rather than fail the RPC's error path.
    data = message.encode("utf-8", "backslashreplace")
    last = len(data) - 1
    if all(b in _UNRESERVED for b in data) and data[:1] != b" " and data[-1:] != b" ":
        return data.decode("ascii")
    return "".join(
        chr(b) if b in _UNRESERVED and not (b == 0x20 and i in (0, last)) else f"%{b:02X}"
        for i, b in enumerate(data)
    )


def decode_grpc_message(value: str) -> str:
    """Decode ``grpc-message``; malformed escapes are kept literally, as the spec asks."""
    if "%" not in value:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25 and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)
