"""The ``grpc-timeout`` header: at most 8 ASCII digits followed by a unit (H M S m u n)."""

from __future__ import annotations

import math

# Seconds per unit as an exact fraction (numerator, denominator): ``value * num / den`` is then
# one correctly rounded division, so 1100000u is exactly 1.1 s and not 1.0999999999999999.
_UNITS = {
    "n": (1, 1_000_000_000),
    "u": (1, 1_000_000),
    "m": (1, 1_000),
    "S": (1, 1),
    "M": (60, 1),
    "H": (3600, 1),
}
# Finest unit first: a timeout is sent in the finest unit whose value fits in 8 digits.
_ENCODE_ORDER = ("n", "u", "m", "S", "M", "H")
_MAX_VALUE = 99_999_999


class InvalidTimeout(ValueError):
    """A malformed ``grpc-timeout`` value."""


def _seconds(value: int, unit: str) -> float:
    num, den = _UNITS[unit]
    return value * num / den


def parse_timeout(value: str | bytes) -> float:
    """``grpc-timeout`` → seconds. Raises :class:`InvalidTimeout` for a malformed value."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    digits, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not (1 <= len(digits) <= 8) or not digits.isdigit():
        raise InvalidTimeout(f"malformed grpc-timeout {text!r}: want 1-8 digits and one of HMSmun")
    if not digits.isascii():
        raise InvalidTimeout(f"malformed grpc-timeout {text!r}")
    return _seconds(int(digits), unit)


def encode_timeout(seconds: float) -> str:
    """Seconds → ``grpc-timeout``, rounding up so the peer never sees a shorter deadline.

    Timeouts beyond the largest value (99999999H, about 11,000 years) are sent as that value.
    """
    if seconds <= 0:
        return "1n"
    for unit in _ENCODE_ORDER:
        num, den = _UNITS[unit]
        if seconds * den / num > _MAX_VALUE + 1:
            continue
        value = max(math.ceil(seconds * den / num), 1)
        # The float product may round down onto an integer; the peer must not get less time.
        if _seconds(value, unit) < seconds:
            value += 1
        if value <= _MAX_VALUE:
            return f"{value}{unit}"
    return f"{_MAX_VALUE}H"
