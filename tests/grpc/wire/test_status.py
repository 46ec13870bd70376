from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from prism.grpc.wire import status as st_mod
from prism.grpc.wire.status import (
    GrpcError,
    NotFound,
    Status,
    Unavailable,
    decode_grpc_message,
    encode_grpc_message,
)


def test_status_codes_match_the_grpc_spec() -> None:
    assert [(s.name, s.value) for s in Status] == [
        ("OK", 0),
        ("CANCELLED", 1),
        ("UNKNOWN", 2),
        ("INVALID_ARGUMENT", 3),
        ("DEADLINE_EXCEEDED", 4),
        ("NOT_FOUND", 5),
        ("ALREADY_EXISTS", 6),
        ("PERMISSION_DENIED", 7),
        ("RESOURCE_EXHAUSTED", 8),
        ("FAILED_PRECONDITION", 9),
        ("ABORTED", 10),
        ("OUT_OF_RANGE", 11),
        ("UNIMPLEMENTED", 12),
        ("INTERNAL", 13),
        ("UNAVAILABLE", 14),
        ("DATA_LOSS", 15),
        ("UNAUTHENTICATED", 16),
    ]


@pytest.mark.parametrize("code", [s for s in Status if s is not Status.OK])
def test_grpc_error_for_status_returns_the_specific_class(code: Status) -> None:
    error = GrpcError.for_status(code, "why", [("k", "v")])
    assert error.status is code
    assert type(error).status is code
    assert type(error) is not GrpcError
    assert error.message == "why"
    assert error.trailers == [("k", "v")]


def test_grpc_error_for_status_accepts_int() -> None:
    error = GrpcError.for_status(5)
    assert isinstance(error, NotFound)


def test_grpc_error_for_unknown_code_is_unknown_and_keeps_trailers() -> None:
    error = GrpcError.for_status(99, "odd", [("k", "v")])
    assert error.status is Status.UNKNOWN
    assert "99" in error.message
    assert "odd" in error.message
    assert error.trailers == [("k", "v")]


def test_grpc_error_subclass_is_caught_as_grpc_error() -> None:
    with pytest.raises(GrpcError) as info:
        raise Unavailable("backend down")
    assert info.value.status is Status.UNAVAILABLE


def test_grpc_error_with_explicit_status() -> None:
    error = GrpcError("custom", status=Status.ABORTED)
    assert error.status is Status.ABORTED
    assert GrpcError().status is Status.UNKNOWN


def test_grpc_error_str_and_repr() -> None:
    assert str(NotFound("no such key")) == "NOT_FOUND: no such key"
    assert str(NotFound()) == "NOT_FOUND"
    assert repr(NotFound("x")) == "NotFound('x', status=NOT_FOUND)"


def test_every_error_class_has_its_own_status() -> None:
    classes = [
        obj
        for obj in vars(st_mod).values()
        if isinstance(obj, type) and issubclass(obj, GrpcError) and obj is not GrpcError
    ]
    assert sorted(c.status for c in classes) == [s for s in Status if s is not Status.OK]


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        ("plain text, 100 chars max!", "plain text, 100 chars max!"),
        ("", ""),
        ("50%", "50%25"),
        ("caf\u00e9", "caf%C3%A9"),
        ("a\nb", "a%0Ab"),
        ("\u2603", "%E2%98%83"),
        (" padded ", "%20padded%20"),
        ("in ner", "in ner"),
    ],
)
def test_encode_grpc_message(message: str, wire: str) -> None:
    assert encode_grpc_message(message) == wire
    assert decode_grpc_message(wire) == message


@pytest.mark.parametrize("wire", ["100%", "%", "%4", "%zz", "%%41", "a%g1b"])
def test_decode_grpc_message_keeps_malformed_escapes_literally(wire: str) -> None:
    assert decode_grpc_message(wire) == wire.replace("%41", "A")


def test_decode_grpc_message_accepts_lowercase_hex() -> None:
    assert decode_grpc_message("caf%c3%a9") == "caf\u00e9"


def test_decode_grpc_message_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode_grpc_message("bad %FF byte") == "bad \ufffd byte"


def test_encode_grpc_message_lone_surrogate_does_not_raise() -> None:
    # A file name decoded with surrogateescape ends up in an error message.
    wire = encode_grpc_message("no such file: /tmp/\udcff")
    assert wire.isascii()
    assert "udcff" in decode_grpc_message(wire)


def _printable_ascii(wire: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in wire)


@given(st.text())
def test_grpc_message_round_trip(message: str) -> None:
    assert decode_grpc_message(encode_grpc_message(message)) == message


@given(st.text())
def test_grpc_message_encoding_is_a_valid_http2_field_value(message: str) -> None:
    wire = encode_grpc_message(message)
    assert _printable_ascii(wire)
    assert wire[:1] != " "
    assert wire[-1:] != " "


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
@example("%20")  # a decoding by str.replace read this back as " "
def test_grpc_message_printable_ascii_is_sent_as_is(message: str) -> None:
    wire = encode_grpc_message(message)
    # Only '%' (and a space at either end) is escaped: each escape adds two characters.
    escapes = (
        message.count("%") + message[:1].isspace() + (len(message) > 1) * message[-1:].isspace()
    )
    assert len(wire) == len(message) + 2 * escapes
    assert urllib.parse.unquote(wire) == message
