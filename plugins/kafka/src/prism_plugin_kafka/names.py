"""Topics as Kafka topic names, and aiokafka's errors as statuses.

A Prism topic may hold any character; a Kafka topic only letters, digits, '.', '_' and '-', at
most 249 of them. So every topic is escaped: letters, digits, '.' and '-' stay, every other byte
of its UTF-8 form (``_`` included) becomes ``_`` and two hex digits. The escape is one-to-one,
so two topics never share a Kafka topic; a topic already made of letters, digits, '.' and '-'
is its Kafka topic unchanged (after ``topic_prefix``).
"""

from __future__ import annotations

import re
import string

import aiokafka.errors as errors

from prism.sdk import (
    DeadlineExceeded,
    GrpcError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = ["MAX_TOPIC_CHARS", "escape", "is_auth_error", "status_of", "valid_prefix"]

_KEEP = frozenset((string.ascii_letters + string.digits + ".-").encode())
#: Kafka's limit on a topic name's length.
MAX_TOPIC_CHARS = 249
_PREFIX = re.compile(r"[A-Za-z0-9._-]*\Z")

_AUTH = (
    errors.SaslAuthenticationFailed,
    errors.AuthenticationFailedError,
    errors.AuthenticationMethodNotSupported,
    errors.UnsupportedSaslMechanismError,
    errors.IllegalSaslStateError,
)
_DENIED = (
    errors.TopicAuthorizationFailedError,
    errors.GroupAuthorizationFailedError,
    errors.ClusterAuthorizationFailedError,
)


def escape(prefix: str, topic: str) -> str:
    if not topic:
        raise InvalidArgument("topic must not be empty")
    name = prefix + "".join(chr(b) if b in _KEEP else f"_{b:02x}" for b in topic.encode())
    if len(name) > MAX_TOPIC_CHARS or name in (".", ".."):
        raise InvalidArgument(
            f"topic {topic!r} is not a Kafka topic: {len(name)} characters once escaped "
            f"(at most {MAX_TOPIC_CHARS}), or '.' or '..'"
        )
    return name


def valid_prefix(value: str) -> str:
    if not _PREFIX.match(value) or len(value) > 100:
        raise InvalidArgument(
            "config field 'topic_prefix' may hold only letters, digits, '.', '_' and '-' "
            "(at most 100)"
        )
    return value


def is_auth_error(exc: BaseException | None) -> bool:
    return isinstance(exc, _AUTH)


def status_of(exc: BaseException, what: str) -> GrpcError:
    """The status an aiokafka error means for a caller (its messages hold no credentials)."""
    if isinstance(exc, GrpcError):
        return exc
    if is_auth_error(exc):
        return Unauthenticated(f"{what}: the Kafka broker refused the credentials")
    if isinstance(exc, _DENIED):
        return PermissionDenied(f"{what}: {type(exc).__name__} (the broker's ACLs)")
    if isinstance(exc, errors.UnknownTopicOrPartitionError):
        return NotFound(f"{what}: no such topic")
    if isinstance(
        exc,
        errors.MessageSizeTooLargeError
        | errors.InvalidTopicError
        | errors.RecordListTooLargeError
        | errors.InvalidPartitionsError
        | errors.InvalidReplicationFactorError,
    ):
        return InvalidArgument(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, errors.KafkaTimeoutError | errors.RequestTimedOutError | TimeoutError):
        return DeadlineExceeded(f"{what}: the Kafka broker did not answer in time")
    if isinstance(exc, errors.KafkaError | OSError):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}")
    return Internal(f"{what}: {type(exc).__name__}")
