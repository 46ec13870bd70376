"""prism's HPACK decoder against hpack's: same headers, same table, same errors."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.grpc.wire import hpack_codec
from prism.grpc.wire.hpack_codec import Decoder, Encoder

_names = st.sampled_from(
    [b":path", b":authority", b"content-type", b"grpc-timeout", b"x-a", b"user-agent", b"te"]
) | st.binary(min_size=1, max_size=40)
_values = st.binary(max_size=300)
_header = st.tuples(_names, _values, st.booleans())  # (name, value, sensitive)
_block = st.lists(_header, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(_block, min_size=1, max_size=8),
    huffman=st.booleans(),
    sizes=st.lists(st.sampled_from([None, 0, 64, 256, 4096]), min_size=8, max_size=8),
)
def test_decodes_like_hpack(
    blocks: list[list[tuple[bytes, bytes, bool]]], huffman: bool, sizes: list[int | None]
) -> None:
    encoder = hpack.Encoder()
    ours, theirs = Decoder(), hpack.Decoder()
    for block, size in zip(blocks, sizes, strict=False):
        if size is not None:
            encoder.header_table_size = size
        data = encoder.encode(block, huffman=huffman)
        expected = [(bytes(n), bytes(v)) for n, v in theirs.decode(data, raw=True)]
        got = ours.decode(data, raw=True)
        assert [type(h) for h in got] == [tuple] * len(got)
        assert list(got) == expected == [(n, v) for n, v, _ in block]
        assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries
        assert ours.header_table_size == theirs.header_table_size


@pytest.mark.parametrize(
    "data",
    [
        b"\x80",  # index 0
        b"\xff\x80\x80\x80\x80\x80\x01",  # integer too long
        b"\xbe",  # index 62: empty dynamic table
        b"\x40\x05ab",  # truncated name
        b"\x40\x01a\x05ab",  # truncated value
        b"\x41",  # name index, value missing
        b"\x40\x01a\x81\xff",  # invalid Huffman (EOS)
        b"\x82\x3f\xe1\x1f",  # table size update after a field
        b"\x3f\xe1\xff\x03",  # table size over the allowed maximum
    ],
)
def test_rejects_malformed_blocks_like_hpack(data: bytes) -> None:
    with pytest.raises(hpack.HPACKError):
        hpack.Decoder().decode(data, raw=True)
    with pytest.raises(hpack.HPACKError):
        Decoder().decode(data, raw=True)


def test_header_list_size_limit() -> None:
    decoder = Decoder()
    decoder.max_header_list_size = 100
    data = hpack.Encoder().encode([(b"x-a", b"v" * 80)])
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(data, raw=True)


def test_table_size_update_within_the_limit_applies() -> None:
    decoder = Decoder()
    encoder = hpack.Encoder()
    decoder.decode(encoder.encode([(b"x-a", b"1")]), raw=True)
    encoder.header_table_size = 0
    assert decoder.decode(encoder.encode([(b"x-b", b"2")]), raw=True) == [(b"x-b", b"2")]
    assert decoder.header_table_size == 0
    assert not decoder.header_table.dynamic_entries


def test_non_raw_decoding_is_hpacks() -> None:
    data = hpack.Encoder().encode([(b"x-a", b"v")])
    assert list(Decoder().decode(data)) == [("x-a", "v")]


def _cache_bytes() -> int:
    return sum(len(k) + len(v) for k, v in hpack_codec._HUFFMAN_CACHE.items())


def test_decoder_caches_a_repeated_bearer_token_across_connections() -> None:
    # As h2load sends it: never indexed, Huffman-coded, on every request of every connection.
    token = b"Bearer eyJhbGciOiJFUzI1NiJ9." + b"eyJzdWIiOiJ1c2VyLTQyIn0" * 40 + b".c2ln"
    block = [hpack.NeverIndexedHeaderTuple(b"authorization", token)]
    for _ in range(3):
        data = hpack.Encoder().encode(block, huffman=True)
        assert Decoder().decode(data, raw=True) == [(b"authorization", token)]
    assert token in hpack_codec._HUFFMAN_CACHE.values()
    assert hpack_codec._huffman_cache_bytes == _cache_bytes()


def test_decoder_huffman_cache_stays_bounded_under_unique_long_strings() -> None:
    encoder, ours, theirs = hpack.Encoder(), Decoder(), hpack.Decoder()
    for i in range(600):  # ~3 KiB coded each: ~2 MiB of keys and values in all
        value = b"%06d-" % i + bytes(range(32, 127)) * 40
        data = encoder.encode([hpack.NeverIndexedHeaderTuple(b"x-token", value)], huffman=True)
        expected = [(bytes(n), bytes(v)) for n, v in theirs.decode(data, raw=True)]
        assert ours.decode(data, raw=True) == expected == [(b"x-token", value)]
        assert _cache_bytes() == hpack_codec._huffman_cache_bytes
        assert hpack_codec._huffman_cache_bytes <= hpack_codec._HUFFMAN_CACHE_BUDGET
        assert len(hpack_codec._HUFFMAN_CACHE) <= hpack_codec._HUFFMAN_CACHE_ENTRIES
    for i in range(3000):  # short unique strings: the entry count bounds it
        value = b"v%d" % i
        data = encoder.encode([hpack.NeverIndexedHeaderTuple(b"x-a", value)], huffman=True)
        assert ours.decode(data, raw=True) == [(b"x-a", value)]
        assert len(hpack_codec._HUFFMAN_CACHE) <= hpack_codec._HUFFMAN_CACHE_ENTRIES
    assert _cache_bytes() == hpack_codec._huffman_cache_bytes


def test_decoder_decodes_huffman_strings_longer_than_the_cache_takes() -> None:
    value = bytes(range(32, 127)) * 100  # 9.5 KB, ~7 KiB coded
    data = hpack.Encoder().encode([(b"x-big", value)], huffman=True)
    assert Decoder().decode(data, raw=True) == [(b"x-big", value)]
    assert value not in hpack_codec._HUFFMAN_CACHE.values()


_encoder_header = st.one_of(
    st.tuples(_names, st.sampled_from([b"", b"0", b"200", b"application/grpc", b"x" * 90])),
    st.tuples(_names, _values),
    st.tuples(_names, _values, st.booleans()),
    st.builds(hpack.NeverIndexedHeaderTuple, _names, _values),
    st.builds(hpack.HeaderTuple, _names, _values),
    st.tuples(st.sampled_from(["x-text", ":status"]), st.sampled_from(["200", "é"])),
)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(st.lists(_encoder_header, max_size=10), min_size=1, max_size=30),
    huffman=st.booleans(),
    sizes=st.lists(st.sampled_from([None, None, None, 0, 100, 300, 4096]), min_size=30),
)
def test_encodes_like_hpack(
    blocks: list[list[tuple[object, ...]]], huffman: bool, sizes: list[int | None]
) -> None:
    ours, theirs = Encoder(), hpack.Encoder()
    decoder = hpack.Decoder()
    for block, size in zip(blocks, sizes, strict=False):
        if size is not None:
            ours.header_table_size = theirs.header_table_size = size
        data = ours.encode(block, huffman=huffman)
        assert data == theirs.encode(block, huffman=huffman)
        decoded = decoder.decode(data, raw=True)
        assert [(bytes(n), bytes(v)) for n, v in decoded] == [
            (_as_bytes(h[0]), _as_bytes(h[1])) for h in block
        ]
        assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries


def test_encoder_forgets_evicted_entries() -> None:
    encoder, reference = Encoder(), hpack.Encoder()
    for i in range(2000):  # unique values: its index must stay bounded
        block = [(b"grpc-status", b"0"), (b"grpc-message", b"error %d" % i)]
        assert encoder.encode(block) == reference.encode(block)
    assert len(encoder._exact) <= 2 * len(encoder.header_table.dynamic_entries) + 64


def test_encoder_takes_non_list_headers_like_hpack() -> None:
    headers = {b"x-a": b"1", b":status": b"200"}
    assert Encoder().encode(headers) == hpack.Encoder().encode(headers)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
