"""gRPC message compression (doc/compression.md in grpc/grpc), sans-IO, on the stdlib's zlib.

Encodings are the names gRPC puts in ``grpc-encoding`` and ``grpc-accept-encoding``:

* ``gzip``: RFC 1952 (a gzip header and trailer around DEFLATE data);
* ``deflate``: RFC 1950, the zlib format, as gRPC's C core, grpc-go and grpc-java send it;
* ``identity``: no compression.

Decompression is bounded: :func:`decompress` never produces more than ``limit + 1`` bytes,
however far the input would inflate (a "zip bomb" of a few KiB can expand to GiBs), and
refuses the message with RESOURCE_EXHAUSTED once it passes ``limit``.
"""

from __future__ import annotations

import zlib

from prism.grpc.wire.status import Internal, ResourceExhausted

IDENTITY = "identity"
GZIP = "gzip"
DEFLATE = "deflate"
#: What prism can decode, in the order it prefers them.
SUPPORTED: tuple[str, ...] = (GZIP, DEFLATE, IDENTITY)
#: The value of the ``grpc-accept-encoding`` header prism sends.
ACCEPT_ENCODING = ",".join(SUPPORTED).encode("ascii")

# zlib's wbits for each format: 16 + 15 = a gzip wrapper, 15 = a zlib wrapper.
_WBITS = {GZIP: 31, DEFLATE: 15}
# zlib's default level (6), as gRPC's C core (grpcio) and grpc-go use.
DEFAULT_LEVEL = zlib.Z_DEFAULT_COMPRESSION


def check_encoding(name: str | None, what: str = "compression") -> None:
    """Raise ``ValueError`` unless ``name`` is None or an encoding prism can send."""
    if name is not None and name not in SUPPORTED:
        raise ValueError(f"{what} must be one of {', '.join(SUPPORTED)} or None, not {name!r}")


def supported_list() -> str:
    return ", ".join(SUPPORTED)


def parse_accept_encoding(value: bytes) -> frozenset[str]:
    """The encodings a ``grpc-accept-encoding`` value names (``identity`` is always allowed)."""
    names = {part.strip().lower() for part in value.decode("latin-1").split(",")}
    names.discard("")
    names.add(IDENTITY)
    return frozenset(names)


def compress(encoding: str, data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """``data`` in ``encoding`` (``gzip`` or ``deflate``)."""
    # One call: a compressobj costs several times more for messages of a few KiB.
    return zlib.compress(data, level, _WBITS[encoding])


def decompress(encoding: str, data: bytes | bytearray | memoryview, limit: int) -> bytes:
    """Inflate one message compressed with ``encoding``, producing at most ``limit`` bytes.

    Raises RESOURCE_EXHAUSTED when the message would inflate past ``limit`` (having produced no
    more than ``limit + 1`` bytes), INTERNAL when it is not valid ``encoding`` data (corrupt,
    truncated, or followed by bytes that are not part of it) or the encoding is unknown.
    """
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise Internal(f"cannot decompress {encoding!r} (supported: {supported_list()})")
    inflater = zlib.decompressobj(wbits)
    try:
        # max_length caps the output: zlib stops inflating there and keeps the rest of the
        # input in unconsumed_tail, which is never looked at again.
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise Internal(f"received a corrupt {encoding} message: {exc}") from None
    if len(out) > limit:
        raise ResourceExhausted(
            f"received message larger than max when decompressed (more than {limit} bytes)"
        )
    if not inflater.eof:
        raise Internal(f"received a truncated {encoding} message")
    if inflater.unused_data:
        raise Internal(f"received a {encoding} message followed by unexpected bytes")
    return out
