"""prism.sdk.errors: reporting unexpected exceptions without their text, and redaction."""

from __future__ import annotations

import logging

import pytest

from prism.sdk import InvalidArgument, NotFound, Status, Unauthenticated, error_from_text
from prism.sdk.errors import Redactor, format_frames, report_unexpected


def _raise_chained() -> None:
    try:
        raise KeyError("inner-secret")
    except KeyError as exc:
        raise ValueError("outer-secret") from exc


def test_errors_format_frames_keeps_frames_and_types_but_not_messages() -> None:
    with pytest.raises(ValueError, match="outer") as info:
        _raise_chained()
    text = format_frames(info.value)
    assert "in _raise_chained" in text
    assert "builtins.KeyError" in text
    assert "builtins.ValueError" in text
    assert text.index("KeyError") < text.index("which led to") < text.index("ValueError")
    assert "inner-secret" not in text.replace('KeyError("inner-secret")', "")
    assert "<message withheld" in text


def test_errors_report_unexpected_logs_trace_id(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("prism.plugin.test")
    with caplog.at_level(logging.ERROR):
        error = report_unexpected(logger, OSError("pw=abc"), "operation 'x'")
    assert error.status == Status.UNKNOWN
    trace_id = error.message.rsplit(" ", 1)[1].rstrip(")")
    assert len(trace_id) == 32
    assert trace_id in caplog.text
    assert "pw=abc" not in caplog.text


def test_errors_redactor_scrubs_credentials_of_useful_length() -> None:
    redact = Redactor(["s3cret", "abc", "s3cret-longer"])
    assert redact("x s3cret-longer y s3cret z abc") == "x [REDACTED] y [REDACTED] z abc"
    error = Unauthenticated("bad s3cret")
    scrubbed = redact.error(error)
    assert (type(scrubbed), scrubbed.message) == (Unauthenticated, "bad [REDACTED]")
    clean = NotFound("nothing to hide")
    assert redact.error(clean) is clean


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (
            -1,
            "INVALID_ARGUMENT: field 'path' is required",
            (InvalidArgument, "field 'path' is required"),
        ),
        (-1, "UNAUTHENTICATED", (Unauthenticated, "")),
        (-1, "something odd", (None, "something odd")),
        (5, "no key", (NotFound, "no key")),
    ],
)
def test_errors_error_from_text(status: int, text: str, expected: tuple[type | None, str]) -> None:
    error = error_from_text(status, text)
    cls, message = expected
    if cls is None:
        assert error.status == Status.UNKNOWN
    else:
        assert type(error) is cls
    assert error.message == message
