"""The ``grpc-timeout`` header: at most 8 ASCII digits followed by a unit (H M S m u n)."""

from __future__ import annotations

import math

_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Finest unit first: a timeout is sent in the finest unit whose value fits in 8 digits.
_ENCODE_ORDER = (("n", 1e-9), ("u", 1e-6), ("m", 1e-3), ("S", 1.0), ("M", 60.0), ("H", 3600.0))
_MAX_VALUE = 99_999_999


class InvalidTimeout(ValueError):
    """A malformed ``grpc-timeout`` value."""


def parse_timeout(value: str | bytes) -> float:
    """``grpc-timeout`` → seconds. Raises :class:`InvalidTimeout` for a malformed value."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    digits, unit = text[:-1], text[-1:]
    if unit not in _UNIT_SECONDS or not (1 <= len(digits) <= 8) or not digits.isdigit():
        raise InvalidTimeout(f"malformed grpc-timeout {text!r}: want 1-8 digits and one of HMSmun")
    if not digits.isascii():
        raise InvalidTimeout(f"malformed grpc-timeout {text!r}")
    return int(digits) * _UNIT_SECONDS[unit]


def encode_timeout(seconds: float) -> str:
    """Seconds → ``grpc-timeout``, rounding up so the peer never sees a shorter deadline."""
    if seconds <= 0:
        return "1n"
    for unit, size in _ENCODE_ORDER:
        value = math.ceil(seconds / size - 1e-9)
        if value <= _MAX_VALUE:
            return f"{max(value, 1)}{unit}"
    return f"{_MAX_VALUE}H"
