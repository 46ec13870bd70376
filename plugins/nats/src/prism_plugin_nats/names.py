"""Topics and groups as NATS names, and nats-py's errors as statuses.

A topic may hold any character; NATS subject tokens may not hold '.', '*', '>' or whitespace,
and stream and consumer names only letters, digits, '-' and '_'. So every topic (and group) is
escaped the same way for all three: letters, digits and '-' stay, every other byte of its UTF-8
form (``_`` included) becomes ``_`` and two hex digits. The escape is one-to-one, so two topics
never share a subject or a stream.
"""

from __future__ import annotations

import re
import string

import nats.errors
import nats.js.errors

from prism.sdk import (
    DeadlineExceeded,
    GrpcError,
    Internal,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)

__all__ = ["MAX_NAME_BYTES", "escape", "is_auth_error", "status_of", "valid_prefix"]

_KEEP = frozenset((string.ascii_letters + string.digits + "-").encode())
#: Longest topic or group, in UTF-8 bytes (JetStream names are at most 255 characters).
MAX_NAME_BYTES = 80
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")


def escape(what: str, name: str) -> str:
    if not name:
        raise InvalidArgument(f"{what} must not be empty")
    raw = name.encode()
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{what} is {len(raw)} bytes long (at most {MAX_NAME_BYTES})")
    return "".join(chr(b) if b in _KEEP else f"_{b:02x}" for b in raw)


def valid_prefix(field: str, value: str, *, dots: bool) -> str:
    if not _PREFIX.match(value) or (not dots and "." in value):
        allowed = "letters, digits, '-', '_'" + (" and inner dots" if dots else "")
        raise InvalidArgument(f"config field {field!r} may hold only {allowed}")
    return value


def is_auth_error(error: BaseException | None) -> bool:
    return error is not None and (
        isinstance(error, nats.errors.AuthorizationError)
        or "authorization violation" in str(error).lower()
        or "authentication" in str(error).lower()
    )


def status_of(exc: BaseException, what: str) -> GrpcError:
    """The status a nats-py error means for a caller (never its credentials: nats-py's
    messages hold none)."""
    if isinstance(exc, GrpcError):
        return exc
    if is_auth_error(exc):
        return Unauthenticated(f"{what}: the NATS server refused the credentials")
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFound(f"{what}: {exc.description or 'not found'}")
    if isinstance(exc, nats.js.errors.BadRequestError):
        return InvalidArgument(f"{what}: {exc.description or 'bad request'}")
    if isinstance(exc, nats.js.errors.APIError):
        return Internal(f"{what}: JetStream error {exc.err_code}: {exc.description}")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return InvalidArgument(f"{what}: larger than the server's max_payload")
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return DeadlineExceeded(f"{what}: the NATS server did not answer in time")
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return Unavailable(f"{what}: JetStream did not answer (is it enabled on the server?)")
    if isinstance(exc, nats.errors.Error | OSError):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}")
    return Internal(f"{what}: {type(exc).__name__}")
