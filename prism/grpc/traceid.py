"""W3C trace ids (https://www.w3.org/TR/trace-context/): the id an internal error is reported
under, so the client's message, the log record and the audit record name the same one.

A call's id is its ``traceparent``'s when that header is valid, else a new one. Parsing is
strict, as the specification asks: lower-case hex only, no all-zero ids, version ``ff``
invalid, and a version-00 header has no trailing fields (a later version may add some).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from random import randbytes

__all__ = ["TRACEPARENT", "ZERO_SPAN", "ZERO_TRACE", "from_traceparent", "new", "new_span", "parse"]

TRACEPARENT = "traceparent"
ZERO_TRACE, ZERO_SPAN = "0" * 32, "0" * 16

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only. A later version may
# append fields after a "-".
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")


def parse(value: str) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else None."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == ZERO_TRACE or parent_id == ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16)


def new() -> str:
    """A new trace id: 32 lower-case hex digits, never all zeros."""
    # randbytes + hex: the cheapest way to a hex id measured here (os.urandom is a system
    # call; ids need to be unique, not secret).
    while (value := randbytes(16).hex()) == ZERO_TRACE:
        pass
    return value


def new_span() -> str:
    """A new span id: 16 lower-case hex digits, never all zeros."""
    while (value := randbytes(8).hex()) == ZERO_SPAN:
        pass
    return value


def from_traceparent(headers: Iterable[tuple[str, str | bytes]]) -> str:
    """The trace id of the one valid ``traceparent`` among ``headers`` (lower-case names, as
    gRPC metadata and h11 give them), else a new one. Given twice, it is ignored, as the
    specification says of a header it cannot trust."""
    found: str | bytes | None = None
    count = 0
    for key, value in headers:
        if key == TRACEPARENT:
            found = value
            count += 1
    if count == 1 and isinstance(found, str):
        parsed = parse(found)
        if parsed is not None:
            return parsed[0]
    return new()
