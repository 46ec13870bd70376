"""Custom metadata: ASCII keys and values, binary values under ``-bin`` keys (base64 on the wire).

A :data:`Metadata` is an ordered list of ``(key, value)`` pairs; keys repeat. ASCII values are
``str``; values of keys ending in ``-bin`` are ``bytes``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence

MetadataValue = str | bytes
Metadata = list[tuple[str, MetadataValue]]
MetadataLike = Sequence[tuple[str, MetadataValue]]

# Headers the transport owns: they never appear as user metadata and users may not send them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "te",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-message-type",
        "grpc-status",
        "grpc-message",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "host",
        "content-length",
    }
)

_KEY = re.compile(r"[0-9a-z\-_.]+\Z")
_ASCII_VALUE = re.compile(r"[\x20-\x7e]*\Z")
# What RFC 9113 §8.2.1 allows in a (non-pseudo) field name.
_FIELD_NAME = re.compile(rb"[^\x00-\x20A-Z:\x7f-\xff]+\Z")


class MetadataError(ValueError):
    """Metadata that cannot be sent or was received malformed."""


def is_binary_key(key: str) -> bool:
    return key.endswith("-bin")


def validate(metadata: MetadataLike) -> None:
    """Raise :class:`MetadataError` naming the first pair that may not be sent."""
    for key, value in metadata:
        if not _KEY.match(key):
            raise MetadataError(f"invalid metadata key {key!r}: use lowercase 0-9 a-z - _ .")
        if key.startswith(":") or key in RESERVED_HEADERS:
            raise MetadataError(f"metadata key {key!r} is reserved by gRPC")
        if is_binary_key(key):
            if not isinstance(value, bytes):
                raise MetadataError(f"metadata key {key!r} ends in -bin: its value must be bytes")
        elif not isinstance(value, str) or not _ASCII_VALUE.match(value):
            raise MetadataError(
                f"metadata value for {key!r} must be printable ASCII text"
                " (use a -bin key for bytes)"
            )
        elif value[:1] == " " or value[-1:] == " ":
            # HTTP/2 (RFC 9113 §8.2.1) forbids it; a peer's h2 rejects the whole header block.
            raise MetadataError(f"metadata value for {key!r} may not start or end with a space")


def encode(metadata: MetadataLike) -> list[tuple[bytes, bytes]]:
    """Metadata → HTTP/2 header pairs (validated; binary values base64 without padding)."""
    validate(metadata)
    out: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        if isinstance(value, bytes):
            out.append((key.encode(), base64.b64encode(value).rstrip(b"=")))
        else:
            out.append((key.encode(), value.encode()))
    return out


def decode(headers: Iterable[tuple[bytes, bytes]]) -> Metadata:
    """HTTP/2 header pairs → user metadata, dropping pseudo and reserved headers.

    Text values lose surrounding spaces and tabs (not part of a field value, RFC 9110 §5.5;
    some peers send them anyway). Raises :class:`MetadataError` for a malformed field name
    (RFC 9113 §8.2.1: empty, uppercase, control characters, a colon) and for a ``-bin`` value
    that is not base64. h2 does not validate inbound headers for us (see ``h2conn``).
    """
    out: Metadata = []
    for raw_key, raw_value in headers:
        if raw_key[:1] == b":":
            continue
        key = raw_key.decode("latin-1")
        if key in RESERVED_HEADERS:
            continue
        if not _FIELD_NAME.match(raw_key):
            raise MetadataError(f"malformed header name {key!r}")
        if is_binary_key(key):
            out.append((key, decode_binary(raw_value, key)))
        else:
            out.append((key, raw_value.decode("latin-1").strip(" \t")))
    return out


def decode_binary(value: bytes, key: str = "") -> bytes:
    """Base64 (padded or not, standard alphabet) → bytes; several values may be comma-joined."""
    try:
        return b"".join(
            base64.b64decode(part.strip() + b"=" * (-len(part.strip()) % 4), validate=True)
            for part in value.split(b",")
        )
    except (binascii.Error, ValueError) as exc:
        raise MetadataError(f"metadata {key!r} is not valid base64") from exc
