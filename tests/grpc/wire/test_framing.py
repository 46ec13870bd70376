from __future__ import annotations

import gzip
import itertools
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.grpc.wire.framing import MessageDecoder, encode_message, frame_header
from prism.grpc.wire.status import Internal, ResourceExhausted, Status


def frame(payload: bytes, flag: int = 0, length: int | None = None) -> bytes:
    """A length-prefixed message built by hand, independently of the module under test."""
    return struct.pack(">BI", flag, len(payload) if length is None else length) + payload


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_encode_message_layout() -> None:
    assert encode_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode_message(b"") == b"\x00\x00\x00\x00\x00"
    assert encode_message(b"x", compressed=True) == b"\x01\x00\x00\x00\x01x"


def test_frame_header_matches_encode_message() -> None:
    payload = bytes(range(256)) * 300
    assert frame_header(len(payload)) + payload == encode_message(payload)


def test_message_decoder_returns_one_whole_message() -> None:
    decoder = MessageDecoder(1024)
    assert decoder.receive_data(frame(b"hello")) == [b"hello"]
    assert not decoder.partial
    assert decoder.buffered == 0


def test_message_decoder_returns_empty_message() -> None:
    assert MessageDecoder(1024).receive_data(frame(b"")) == [b""]


def test_message_decoder_returns_several_messages_from_one_chunk_in_order() -> None:
    data = frame(b"one") + frame(b"") + frame(b"three")
    assert MessageDecoder(1024).receive_data(data) == [b"one", b"", b"three"]


def test_message_decoder_byte_by_byte() -> None:
    decoder = MessageDecoder(1024)
    out: list[bytes] = []
    for i, byte in enumerate(frame(b"abc") + frame(b"de")):
        out += decoder.receive_data(bytes([byte]))
        if i < 7:
            assert out == []
    assert out == [b"abc", b"de"]


def test_message_decoder_messages_are_bytes() -> None:
    # Callers hand messages to protobuf parsers and keep them: no bytearray or memoryview views.
    decoder = MessageDecoder(1 << 20)
    messages = decoder.receive_data(frame(b"ab")[:4])
    messages += decoder.receive_data(frame(b"ab")[4:] + frame(b"x" * 1000)[:500])
    messages += decoder.receive_data(frame(b"x" * 1000)[500:])
    assert messages == [b"ab", b"x" * 1000]
    assert all(type(m) is bytes for m in messages)


def test_message_decoder_reports_partial_message() -> None:
    decoder = MessageDecoder(1024)
    assert decoder.receive_data(frame(b"abcdef")[:8]) == []
    assert decoder.partial
    assert decoder.buffered == 8


def test_message_decoder_reports_partial_header() -> None:
    decoder = MessageDecoder(1024)
    assert decoder.receive_data(b"\x00\x00") == []
    assert decoder.partial
    assert decoder.buffered == 2


def test_message_decoder_header_without_body_is_partial() -> None:
    decoder = MessageDecoder(1024)
    assert decoder.receive_data(frame(b"abc")[:5]) == []
    assert decoder.partial


def test_message_decoder_accepts_message_of_exactly_max_size() -> None:
    assert MessageDecoder(10).receive_data(frame(b"x" * 10)) == [b"x" * 10]


def test_message_decoder_oversize_raises_from_header_alone() -> None:
    decoder = MessageDecoder(10)
    with pytest.raises(ResourceExhausted) as info:
        decoder.receive_data(frame(b"", length=11))
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert "11" in info.value.message
    assert "10" in info.value.message


def test_message_decoder_oversize_raises_when_split_header_completes() -> None:
    decoder = MessageDecoder(1 << 20)
    header = frame(b"", length=1 << 30)
    assert decoder.receive_data(header[:3]) == []
    with pytest.raises(ResourceExhausted):
        decoder.receive_data(header[3:])


def test_message_decoder_oversize_after_valid_messages_raises() -> None:
    decoder = MessageDecoder(4)
    with pytest.raises(ResourceExhausted):
        decoder.receive_data(frame(b"ok") + frame(b"", length=5))


def test_message_decoder_compressed_flag_on_an_identity_stream_is_internal() -> None:
    with pytest.raises(Internal, match="compressed") as info:
        MessageDecoder(1024).receive_data(frame(b"abc", flag=1))
    assert info.value.status is Status.INTERNAL


def test_message_decoder_compressed_flag_raises_from_header_alone() -> None:
    with pytest.raises(Internal):
        MessageDecoder(1024).receive_data(frame(b"", flag=1, length=100))


@pytest.mark.parametrize("flag", [2, 0x80, 0xFF])
def test_message_decoder_invalid_flag_is_internal(flag: int) -> None:
    with pytest.raises(Internal, match=f"invalid message flag {flag}"):
        MessageDecoder(1024).receive_data(frame(b"abc", flag=flag))


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
)
def test_message_decoder_round_trip_at_any_chunk_boundaries(
    payloads: list[bytes], cuts: list[int]
) -> None:
    decoder = MessageDecoder(300)
    stream = b"".join(encode_message(p) for p in payloads)
    out: list[bytes] = []
    for chunk in split(stream, cuts):
        out += decoder.receive_data(chunk)
    assert out == payloads
    assert not decoder.partial
    assert decoder.buffered == 0


@given(
    payload=st.binary(min_size=1, max_size=2000),
    cut=st.integers(min_value=0, max_value=2004),
)
def test_message_decoder_buffered_counts_held_back_bytes(payload: bytes, cut: int) -> None:
    decoder = MessageDecoder(2000)
    cut = min(cut, len(payload) + 4)
    assert decoder.receive_data(encode_message(payload)[:cut]) == []
    assert decoder.buffered == cut
    assert decoder.partial == (cut > 0)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_message_decoder_inflates_flagged_messages_of_any_split(encoding: str) -> None:
    big = bytes(range(256)) * 400
    packed = zlib.compress(big) if encoding == "deflate" else gzip.compress(big)
    data = (
        frame(packed, flag=1)
        + frame(b"raw")
        + frame(gzip.compress(b"") if encoding == "gzip" else zlib.compress(b""), flag=1)
    )
    for cuts in ([], [3], [7, 9000], list(range(1, len(data), 4096))):
        decoder = MessageDecoder(1 << 20, encoding)
        out: list[bytes] = []
        for part in split(data, cuts):
            out += decoder.receive_data(part)
        assert out == [big, b"raw", b""]


def test_message_decoder_compressed_message_inflating_past_max_is_resource_exhausted() -> None:
    decoder = MessageDecoder(1000, "gzip")
    with pytest.raises(ResourceExhausted):
        decoder.receive_data(frame(gzip.compress(b"a" * 1001), flag=1))
