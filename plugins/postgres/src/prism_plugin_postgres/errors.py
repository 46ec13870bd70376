"""PostgreSQL's errors as gRPC statuses.

Statement errors carry a SQLSTATE (PostgreSQL's error code appendix); the mapping follows the
data model (``prism.data.v1`` sql.proto): a syntax error, an unknown table or column, bad input,
a wrong number of parameters → INVALID_ARGUMENT; a unique-key violation → ALREADY_EXISTS;
another constraint → FAILED_PRECONDITION; a serialization failure or deadlock → ABORTED (retry
the whole transaction); a statement cancelled by ``statement_timeout`` → DEADLINE_EXCEEDED; the
server shutting down or the connection lost → UNAVAILABLE. Messages are the server's primary
message (it names tables, columns, constraints and the caller's own input, never credentials)
with the SQLSTATE.

A connection attempt that fails has no SQLSTATE from libpq, only its message, which is
classified here: rejected credentials → UNAUTHENTICATED (the message names the user, never the
password), an unreachable server → UNAVAILABLE.
"""

from __future__ import annotations

import psycopg
from psycopg import pq

from prism.sdk import GrpcError, Status

__all__ = [
    "ConnectionLost",
    "connect_error",
    "is_retryable_loss",
    "statement_error",
    "status_for_sqlstate",
]

_CLASSES: dict[str, Status] = {
    "08": Status.UNAVAILABLE,  # connection exception
    "0A": Status.INVALID_ARGUMENT,  # feature not supported
    "22": Status.INVALID_ARGUMENT,  # data exception
    "23": Status.FAILED_PRECONDITION,  # integrity constraint violation
    "25": Status.INVALID_ARGUMENT,  # invalid transaction state
    "26": Status.INVALID_ARGUMENT,  # invalid SQL statement name
    "28": Status.UNAUTHENTICATED,  # invalid authorization specification
    "2B": Status.FAILED_PRECONDITION,  # dependent privilege descriptors still exist
    "34": Status.INVALID_ARGUMENT,  # invalid cursor name
    "3D": Status.INVALID_ARGUMENT,  # invalid catalog name
    "3F": Status.INVALID_ARGUMENT,  # invalid schema name
    "40": Status.ABORTED,  # transaction rollback (serialization failure, deadlock)
    "42": Status.INVALID_ARGUMENT,  # syntax error or access rule violation
    "44": Status.FAILED_PRECONDITION,  # WITH CHECK OPTION violation
    "53": Status.RESOURCE_EXHAUSTED,  # insufficient resources
    "54": Status.INVALID_ARGUMENT,  # program limit exceeded (statement too complex, ...)
    "55": Status.FAILED_PRECONDITION,  # object not in prerequisite state
    "57": Status.UNAVAILABLE,  # operator intervention (shutdown, ...)
    "58": Status.INTERNAL,  # system error (I/O)
    "P0": Status.FAILED_PRECONDITION,  # PL/pgSQL RAISE
    "XX": Status.INTERNAL,
}
_CODES: dict[str, Status] = {
    "23505": Status.ALREADY_EXISTS,  # unique_violation
    "25006": Status.FAILED_PRECONDITION,  # read_only_sql_transaction (a standby)
    "42501": Status.PERMISSION_DENIED,  # insufficient_privilege
    "55P03": Status.ABORTED,  # lock_not_available (lock_timeout)
    "57014": Status.DEADLINE_EXCEEDED,  # query_canceled: statement_timeout (or ours)
    "08P01": Status.INVALID_ARGUMENT,  # protocol_violation: wrong number of parameters
    "XX001": Status.DATA_LOSS,  # data_corrupted
    "XX002": Status.DATA_LOSS,  # index_corrupted
}
#: The backend ended the session before running the statement (a terminated or restarting
#: server): the statement did not run, so it may be retried on a new connection.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})


class ConnectionLost(Exception):
    """The connection broke mid-exchange; whether the statement ran is unknown — unless the
    server said it ended the session (``session_ended``: terminated, shutting down), in which
    case nothing of the batch ran."""

    def __init__(self, message: str, *, session_ended: bool = False) -> None:
        super().__init__(message)
        self.session_ended = session_ended

    @classmethod
    def from_text(cls, text: str) -> ConnectionLost:
        # libpq puts the server's last FATAL message in its error text; these three are
        # SQLSTATE 57P01-57P03 (sent before the server closes a session it did not run).
        ended = any(
            marker in text
            for marker in (
                "terminating connection due to administrator command",
                "terminating connection due to",
                "the database system is shutting down",
                "the database system is starting up",
            )
        )
        return cls(text, session_ended=ended)


def status_for_sqlstate(sqlstate: str) -> Status:
    return _CODES.get(sqlstate) or _CLASSES.get(sqlstate[:2], Status.UNKNOWN)


def sqlstate(result: pq.abc.PGresult) -> str:
    return (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")


def is_retryable_loss(result: pq.abc.PGresult) -> bool:
    return sqlstate(result) in _SESSION_ENDED


def statement_error(result: pq.abc.PGresult, where: str = "") -> GrpcError:
    """The error of a failed statement's result, as its status."""
    code = sqlstate(result)
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    text = (primary or result.error_message or b"statement failed").decode("utf-8", "replace")
    text = text.strip()
    if code == "57014":
        text = f"{text}: the statement ran longer than statement_timeout"
    return GrpcError.for_status(
        status_for_sqlstate(code), f"{where}{text} (SQLSTATE {code or 'unknown'})"
    )


def _reason(message: str) -> str:
    """libpq's text without its "connection to server at ... failed:" prefix and severity."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    for marker in ("failed: FATAL:  ", "failed: FATAL: ", "failed: "):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    return text.removeprefix("FATAL:").strip() or "connection failed"


def connect_error(exc: psycopg.Error, server: str, user: str) -> GrpcError:
    """A failed connection attempt as its status. libpq's message names the server and the
    user, never the password."""
    text = str(exc)
    reason = _reason(text)
    lower = text.lower()
    if "password authentication failed" in lower or ("does not exist" in lower and "role" in lower):
        return GrpcError.for_status(
            Status.UNAUTHENTICATED,
            f"PostgreSQL at {server} rejected the credentials of user {user!r} "
            "(wrong password, unknown user, or expired password)",
        )
    if "authentication method requirement" in lower or "server requested" in lower:
        return GrpcError.for_status(
            Status.FAILED_PRECONDITION,
            f"PostgreSQL at {server} asked for an authentication method config.require_auth "
            f"does not allow: {reason}",
        )
    if "pg_hba.conf" in lower:
        return GrpcError.for_status(
            Status.PERMISSION_DENIED, f"PostgreSQL at {server} refused the connection: {reason}"
        )
    if "database" in lower and "does not exist" in lower:
        return GrpcError.for_status(
            Status.FAILED_PRECONDITION, f"config.database: PostgreSQL at {server}: {reason}"
        )
    if "certificate" in lower or ("ssl" in lower and "does not support" in lower):
        return GrpcError.for_status(
            Status.FAILED_PRECONDITION, f"TLS to PostgreSQL at {server} failed: {reason}"
        )
    if ("too many" in lower and "connections" in lower) or "connection slots" in lower:
        return GrpcError.for_status(
            Status.RESOURCE_EXHAUSTED, f"PostgreSQL at {server} has no connection left: {reason}"
        )
    return GrpcError.for_status(
        Status.UNAVAILABLE, f"cannot connect to PostgreSQL at {server}: {reason}"
    )
