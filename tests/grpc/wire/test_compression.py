"""The message codec: gzip and deflate as other gRPC implementations write them, bounded."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.grpc.wire import compression as codec
from prism.grpc.wire.status import Internal, ResourceExhausted, Status

MiB = 1 << 20


@given(st.binary(max_size=5000), st.sampled_from(["gzip", "deflate"]))
def test_compression_round_trip(data: bytes, encoding: str) -> None:
    assert codec.decompress(encoding, codec.compress(encoding, data), len(data)) == data


def test_compression_gzip_is_rfc_1952_and_deflate_is_the_zlib_format() -> None:
    data = b"interoperable " * 100
    # What other implementations produce and expect: gzip files, and zlib streams.
    assert gzip.decompress(codec.compress("gzip", data)) == data
    assert zlib.decompress(codec.compress("deflate", data)) == data
    assert codec.decompress("gzip", gzip.compress(data), MiB) == data
    assert codec.decompress("deflate", zlib.compress(data), MiB) == data


def test_compression_message_at_the_limit_is_accepted() -> None:
    data = b"a" * 1000
    assert codec.decompress("gzip", codec.compress("gzip", data), 1000) == data
    with pytest.raises(ResourceExhausted) as info:
        codec.decompress("gzip", codec.compress("gzip", data), 999)
    assert info.value.status is Status.RESOURCE_EXHAUSTED


def _bomb(encoding: str, size: int) -> bytes:
    """``size`` zero bytes compressed: ~1000x smaller than they inflate to."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    chunk = bytes(MiB)
    parts = [packer.compress(chunk) for _ in range(size // MiB)]
    return b"".join(parts) + packer.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_zip_bomb_is_refused_without_inflating_it(encoding: str) -> None:
    bomb = _bomb(encoding, 256 * MiB)  # 256 MiB of zeros in ~256 KiB
    assert len(bomb) < MiB
    limit = 4 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(ResourceExhausted, match="larger than max"):
            codec.decompress(encoding, bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The codec stopped at the limit (its output buffer grows by doubling, so it may have held
    # twice that for a moment), instead of inflating 256 MiB.
    assert peak < 3 * limit


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not compressed", "corrupt"),
        (codec.compress("gzip", b"x" * 1000)[:-10], "truncated"),
        (codec.compress("gzip", b"x") + b"junk", "unexpected bytes"),
        (b"", "truncated"),
    ],
)
def test_compression_malformed_input_is_internal(data: bytes, match: str) -> None:
    with pytest.raises(Internal, match=match) as info:
        codec.decompress("gzip", data, MiB)
    assert info.value.status is Status.INTERNAL


def test_compression_unknown_encoding_cannot_be_decompressed() -> None:
    with pytest.raises(Internal, match="snappy"):
        codec.decompress("snappy", b"", MiB)


def test_compression_accept_encoding_parsing() -> None:
    assert codec.parse_accept_encoding(b"gzip, Deflate ,,x") == {"gzip", "deflate", "x", "identity"}
    assert codec.parse_accept_encoding(b"") == {"identity"}


def test_compression_check_encoding_names_the_choices() -> None:
    codec.check_encoding(None)
    codec.check_encoding("gzip")
    with pytest.raises(ValueError, match="gzip, deflate, identity"):
        codec.check_encoding("zstd")
