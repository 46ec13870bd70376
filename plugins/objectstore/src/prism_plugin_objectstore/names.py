"""What the object contract accepts (keys, metadata, ranges) and how S3 headers read back."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from prism._proto.prism.data.v1 import ObjectInfo
from prism.sdk import InvalidArgument, Unavailable

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "check_key",
    "check_metadata",
    "info_from_headers",
    "range_header",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2048  # S3's limit on all user metadata (names and values)
META_PREFIX = "x-amz-meta-"
_META_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,127}\Z")
_META_VALUE = re.compile(r"[\x20-\x7e]*\Z")
_CONTENT_TYPE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}\Z")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")


def check_key(key: str) -> str:
    size = len(key.encode())
    if not 0 < size <= MAX_KEY_BYTES:
        raise InvalidArgument(f"object key must be 1..{MAX_KEY_BYTES} bytes of UTF-8, got {size}")
    # HTTP clients and servers remove "." and ".." path segments (RFC 3986 §5.2.4) before S3
    # sees the key: such a key would name another object, or fail its signature.
    if any(part in (".", "..") for part in key.split("/")):
        raise InvalidArgument(f"object key {key!r}: '.' and '..' segments are not allowed")
    return key


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """User metadata as x-amz-meta-* headers; INVALID_ARGUMENT naming the first bad entry."""
    headers: dict[str, str] = {}
    total = 0
    for name, value in sorted(metadata.items()):
        if not _META_NAME.match(name):
            raise InvalidArgument(
                f"metadata key {name!r}: lower-case letters, digits and '-', 1..128 characters"
            )
        if not _META_VALUE.match(value):
            raise InvalidArgument(f"metadata {name!r}: the value must be printable ASCII")
        total += len(name) + len(value)
        headers[META_PREFIX + name] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {total} bytes, more than {MAX_METADATA_BYTES}")
    return headers


def check_content_type(content_type: str) -> str:
    if not content_type:
        return DEFAULT_CONTENT_TYPE
    if not _CONTENT_TYPE.match(content_type):
        raise InvalidArgument("content_type must be printable ASCII, at most 255 characters")
    return content_type


def range_header(offset: int, length: int) -> dict[str, str]:
    if offset < 0 or length < 0:
        raise InvalidArgument("offset and length must not be negative")
    if offset == 0 and length == 0:
        return {}
    end = "" if length == 0 else str(offset + length - 1)
    return {"Range": f"bytes={offset}-{end}"}


def etag(value: str) -> str:
    return value.strip().removeprefix("W/").strip('"')


def http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def iso_date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def info_from_headers(bucket: str, key: str, headers: httpx.Headers) -> tuple[ObjectInfo, int, int]:
    """The object's info from a HEAD or GET answer, and the range the body holds
    ``(offset, length)``: from Content-Range for a 206, the whole body otherwise."""
    metadata = {
        name[len(META_PREFIX) :]: value
        for name, value in headers.items()
        if name.lower().startswith(META_PREFIX)
    }
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise Unavailable("the backend sent a malformed Content-Length") from None
    offset, size = 0, length
    content_range = headers.get("content-range")
    if content_range:
        match = _CONTENT_RANGE.match(content_range.strip())
        if match is None:
            raise Unavailable(f"the backend sent a malformed Content-Range: {content_range!r}")
        first, last, size = (int(g) for g in match.groups())
        offset, length = first, last - first + 1
    info = ObjectInfo(
        bucket=bucket,
        key=key,
        size=size,
        content_type=headers.get("content-type", DEFAULT_CONTENT_TYPE),
        etag=etag(headers.get("etag", "")),
        metadata=metadata,
        last_modified=http_date(headers.get("last-modified")),
    )
    return info, offset, length
