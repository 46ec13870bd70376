"""Errors a plugin raises, and how the SDK reports the ones it did not expect.

A plugin ends an operation with a status by raising one of the status errors re-exported here
(``raise NotFound("no such table")``); the SDK turns it into the RFC's ``ExecuteResponse``
(``success=False``, ``error``, ``error_code``) or, on a stream, into the call's status.

Any other exception is a bug or an unexpected backend failure. Its text may hold secrets (a
driver's message can quote a connection string with a password), so it never leaves the plugin
and is never logged: the caller gets ``UNKNOWN`` with a trace id, and the plugin's logger gets
that trace id with the traceback's frames and exception types only.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterable

from prism.grpc.wire.status import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    GrpcError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Status,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from prism.logsetup import current_trace_id

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GrpcError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Redactor",
    "ResourceExhausted",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_from_text",
    "report_unexpected",
]

# Credential values shorter than this are not scrubbed from messages: replacing every "a" or
# "42" in an error message would garble it while protecting nothing worth the name.
MIN_REDACTED_LENGTH = 4
REDACTED = "[REDACTED]"


class Redactor:
    """Removes known secret values (the plugin's credentials) from text leaving the plugin.

    Defence in depth: a plugin should never put a credential in an error message, but a
    backend's own error text sometimes quotes one.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_REDACTED_LENGTH}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def error(self, error: GrpcError) -> GrpcError:
        """``error`` itself when it holds no secret, else a copy with the secrets replaced."""
        message = self(error.message)
        if message == error.message:
            return error
        return GrpcError.for_status(error.status, message, error.trailers)


def new_trace_id() -> str:
    """The call's W3C trace id (the proxy passes it in ``traceparent``), else a new id."""
    return current_trace_id() or uuid.uuid4().hex


def format_frames(exc: BaseException) -> str:
    """The traceback of ``exc`` (and its causes) with exception types but not their messages."""
    lines: list[str] = []
    seen: set[int] = set()
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    for link in reversed(chain):
        if lines:
            lines.append("\nwhich led to:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(traceback.extract_tb(link.__traceback__)))
        name = type(link).__module__ + "." + type(link).__qualname__
        lines.append(f"{name}: <message withheld: it may hold secrets>\n")
    return "".join(lines).rstrip("\n")


def report_unexpected(logger: logging.Logger, exc: BaseException, where: str) -> Unknown:
    """Log ``exc`` under a new trace id and return the ``Unknown`` error to send instead."""
    trace_id = new_trace_id()
    logger.error(
        "unexpected %s in %s (trace id %s)\n%s",
        type(exc).__qualname__,
        where,
        trace_id,
        format_frames(exc),
    )
    return Unknown(f"internal error in {where} (trace id {trace_id})")


def error_from_text(status: int, text: str) -> GrpcError:
    """The error a failed response describes.

    ``InitializeResponse`` and ``ShutdownResponse`` carry no status code, so the SDK writes their
    ``error`` as ``"<STATUS_NAME>: <message>"`` (``str(GrpcError)``); pass ``status=-1`` to read the
    status back from that prefix (``UNKNOWN`` when there is none).
    """
    if status >= 0:
        return GrpcError.for_status(status, text)
    name, sep, message = text.partition(": ")
    if name in Status.__members__ and (sep or not message):
        return GrpcError.for_status(Status[name], message)
    return GrpcError.for_status(Status.UNKNOWN, text)
