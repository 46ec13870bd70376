from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.grpc.wire.timeout import InvalidTimeout, encode_timeout, parse_timeout

_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MAX_SECONDS = 99_999_999 * 3600.0


@pytest.mark.parametrize(
    ("wire", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("30S", 30.0),
        ("201m", 0.201),
        ("1100000u", 1.1),
        ("5n", 5e-9),
        ("0S", 0.0),
        ("99999999H", _MAX_SECONDS),
        ("00000001S", 1.0),
    ],
)
def test_parse_timeout_values_grpcio_sends(wire: str, seconds: float) -> None:
    assert parse_timeout(wire) == seconds
    assert parse_timeout(wire.encode()) == seconds


@pytest.mark.parametrize(
    "wire",
    [
        "",
        "S",
        "1",
        "123456789S",  # 9 digits
        "1s",
        "1h",
        "1x",
        "-1S",
        "+1S",
        " 1S",
        "1S ",
        "1.5S",
        "1e3m",
        "0x1S",
        "\u0661S",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, gRPC says no
        "\u00b2S",  # SUPERSCRIPT TWO
        "1SS",
    ],
)
def test_parse_timeout_rejects_malformed(wire: str) -> None:
    with pytest.raises(InvalidTimeout, match="malformed grpc-timeout"):
        parse_timeout(wire)


def test_parse_timeout_rejects_non_ascii_bytes() -> None:
    with pytest.raises(InvalidTimeout):
        parse_timeout(b"1\xffS")


def test_invalid_timeout_is_a_value_error() -> None:
    assert issubclass(InvalidTimeout, ValueError)


@given(
    digits=st.from_regex(r"[0-9]{1,8}", fullmatch=True),
    unit=st.sampled_from(sorted(_UNIT_SECONDS)),
)
def test_parse_timeout_every_unit(digits: str, unit: str) -> None:
    assert parse_timeout(digits + unit) == pytest.approx(int(digits) * _UNIT_SECONDS[unit])


@given(st.from_regex(r"[0-9]{9,12}[HMSmun]", fullmatch=True))
def test_parse_timeout_rejects_more_than_eight_digits(wire: str) -> None:
    with pytest.raises(InvalidTimeout):
        parse_timeout(wire)


@given(st.text(max_size=12).filter(lambda s: not (s[:-1].isascii() and s[:-1].isdigit())))
def test_parse_timeout_rejects_junk(wire: str) -> None:
    with pytest.raises(InvalidTimeout):
        parse_timeout(wire)


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [
        (0.001, "1000000n"),
        (0.1, "100000u"),
        (1.1, "1100000u"),
        (30.0, "30000000u"),
        (100.0, "100000m"),
        (86400.0, "86400000m"),
        (1e-9, "1n"),
    ],
)
def test_encode_timeout_finest_unit_that_fits(seconds: float, wire: str) -> None:
    assert encode_timeout(seconds) == wire


@pytest.mark.parametrize("seconds", [0.0, -1.0, -math.inf, 1e-12])
def test_encode_timeout_expired_or_tiny_is_one_nanosecond(seconds: float) -> None:
    assert encode_timeout(seconds) == "1n"


@pytest.mark.parametrize("seconds", [_MAX_SECONDS, _MAX_SECONDS * 2, math.inf])
def test_encode_timeout_caps_at_largest_value(seconds: float) -> None:
    assert encode_timeout(seconds) == "99999999H"


@given(st.floats(min_value=1e-9, max_value=_MAX_SECONDS))
def test_encode_timeout_never_shortens_and_stays_within_one_unit(seconds: float) -> None:
    wire = encode_timeout(seconds)
    back = parse_timeout(wire)
    assert back >= seconds
    assert back - seconds <= _UNIT_SECONDS[wire[-1]] * (1 + 1e-9)
    assert len(wire) <= 9


@given(st.floats(min_value=1e-9, max_value=_MAX_SECONDS))
def test_encode_timeout_is_stable(seconds: float) -> None:
    wire = encode_timeout(seconds)
    assert encode_timeout(parse_timeout(wire)) == wire
