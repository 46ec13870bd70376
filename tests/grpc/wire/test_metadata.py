from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.grpc.wire.metadata import (
    RESERVED_HEADERS,
    Metadata,
    MetadataError,
    decode,
    decode_binary,
    encode,
    is_binary_key,
    validate,
)


def test_metadata_encode_ascii_and_binary_values() -> None:
    headers = encode([("x-trace-id", "abc"), ("blob-bin", b"\x00\x01\xff")])
    assert headers == [(b"x-trace-id", b"abc"), (b"blob-bin", b"AAH/")]


def test_metadata_encode_binary_without_padding() -> None:
    assert encode([("a-bin", b"\x01")]) == [(b"a-bin", b"AQ")]
    assert encode([("a-bin", b"")]) == [(b"a-bin", b"")]


def test_metadata_encode_keeps_order_and_repeated_keys() -> None:
    md: Metadata = [("k", "1"), ("other", "x"), ("k", "2")]
    assert decode(encode(md)) == md


def test_metadata_decode_drops_pseudo_and_reserved_headers() -> None:
    headers = [
        (b":path", b"/pkg.Svc/M"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"1S"),
        (b"user-agent", b"grpc-python/1.60"),
        (b"x-id", b"7"),
    ]
    assert decode(headers) == [("user-agent", "grpc-python/1.60"), ("x-id", "7")]


@pytest.mark.parametrize("wire", [b"AQI", b"AQI=", b" AQI= "])
def test_metadata_decode_binary_padded_or_not(wire: bytes) -> None:
    assert decode([(b"k-bin", wire)]) == [("k-bin", b"\x01\x02")]


def test_metadata_decode_binary_comma_joined_values() -> None:
    # A peer (or a proxy) may fold repeated -bin headers into one, each base64 on its own.
    assert decode_binary(b"AQ==,Ag") == b"\x01\x02"


@pytest.mark.parametrize("wire", [b"!!!", b"A", b"AQ===", b"AQ?"])
def test_metadata_decode_binary_invalid_base64_names_the_key(wire: bytes) -> None:
    with pytest.raises(MetadataError, match="'k-bin' is not valid base64"):
        decode([(b"k-bin", wire)])


def test_metadata_is_binary_key() -> None:
    assert is_binary_key("trace-bin")
    assert not is_binary_key("trace")
    assert not is_binary_key("bin")


@pytest.mark.parametrize("key", ["X-Upper", "has space", "", "ünï", "a:b", "a/b", "key\n"])
def test_metadata_validate_rejects_invalid_key(key: str) -> None:
    with pytest.raises(MetadataError, match=r"invalid metadata key.*lowercase"):
        validate([(key, "v")])


@pytest.mark.parametrize("key", sorted(RESERVED_HEADERS))
def test_metadata_validate_rejects_reserved_key(key: str) -> None:
    with pytest.raises(MetadataError, match=re.escape(f"{key!r} is reserved by gRPC")):
        validate([(key, "v")])


def test_metadata_validate_rejects_pseudo_header() -> None:
    with pytest.raises(MetadataError, match="':path'"):
        validate([(":path", "/x")])


def test_metadata_validate_rejects_text_under_binary_key() -> None:
    with pytest.raises(MetadataError, match="ends in -bin: its value must be bytes"):
        validate([("blob-bin", "text")])


def test_metadata_validate_rejects_bytes_under_text_key() -> None:
    with pytest.raises(MetadataError, match="use a -bin key for bytes"):
        validate([("blob", b"\x00")])


@pytest.mark.parametrize("value", ["caf\u00e9", "line\nbreak", "tab\there", "nul\x00", "\x7f"])
def test_metadata_validate_rejects_non_printable_ascii_value(value: str) -> None:
    with pytest.raises(MetadataError, match="printable ASCII"):
        validate([("k", value)])


@pytest.mark.parametrize("value", [" lead", "trail ", " "])
def test_metadata_validate_rejects_surrounding_space(value: str) -> None:
    with pytest.raises(MetadataError, match="start or end with a space"):
        validate([("k", value)])


def test_metadata_validate_accepts_inner_space_and_empty_value() -> None:
    validate([("k", "a b"), ("e", ""), ("grpc-status-details-bin", b"\x08\x05")])


def test_metadata_encode_validates_first() -> None:
    with pytest.raises(MetadataError):
        encode([("ok", "1"), ("Bad", "2")])


_KEYS = st.from_regex(r"[0-9a-z_.\-]{1,20}", fullmatch=True).filter(
    lambda k: k not in RESERVED_HEADERS
)
_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).filter(
    lambda v: v[:1] != " " and v[-1:] != " "
)


@st.composite
def _pair(draw: st.DrawFn) -> tuple[str, str | bytes]:
    key = draw(_KEYS)
    if draw(st.booleans()):
        return key.removesuffix("-bin") + "-bin", draw(st.binary(max_size=64))
    key = key.removesuffix("-bin") + "-x" if key.endswith("-bin") else key
    return key, draw(_TEXT)


@given(st.lists(_pair(), max_size=10))
def test_metadata_round_trip(md: Metadata) -> None:
    assert decode(encode(md)) == md


@given(st.lists(_pair(), max_size=10))
def test_metadata_decode_accepts_padded_binary(md: Metadata) -> None:
    padded = [
        (k.encode(), base64.b64encode(v) if isinstance(v, bytes) else v.encode()) for k, v in md
    ]
    assert decode(padded) == md


@given(st.binary(max_size=200))
def test_metadata_binary_encodes_to_unpadded_base64(value: bytes) -> None:
    [(_, wire)] = encode([("v-bin", value)])
    assert b"=" not in wire
    assert base64.b64decode(wire + b"=" * (-len(wire) % 4)) == value
