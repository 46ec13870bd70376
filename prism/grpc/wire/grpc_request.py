"""What makes an HTTP/2 request a gRPC call: its request headers, read and checked, sans-IO.

A request a gRPC server must refuse at the HTTP level (wrong method or content type) raises
:class:`NotGrpc` with the HTTP status to answer; one it answers with a gRPC status (a malformed
``:path``, no ``te: trailers``, an unsupported ``grpc-encoding``, a bad ``grpc-timeout`` or
metadata) raises that status's :class:`~prism.grpc.wire.status.GrpcError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prism.grpc.wire import compression as codec
from prism.grpc.wire import metadata as md
from prism.grpc.wire.status import Internal, InvalidArgument, Unimplemented
from prism.grpc.wire.timeout import InvalidTimeout, parse_timeout


class NotGrpc(Exception):
    """Not a gRPC request: answer with HTTP ``status`` and ``text`` (a plain-text body)."""

    def __init__(self, status: bytes, text: bytes) -> None:
        super().__init__(text.decode("latin-1"))
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class GrpcRequest:
    path: str
    metadata: md.Metadata
    timeout: float | None  # seconds (grpc-timeout), None: no deadline
    authority: str
    encoding: str | None  # grpc-encoding of the request messages, None: identity
    accept_encoding: bytes  # grpc-accept-encoding, as sent (b"": none)


def parse_request(headers: Sequence[tuple[bytes, bytes]]) -> GrpcRequest:
    """The gRPC call ``headers`` (one request's HEADERS, as h2 decoded them) open."""
    method = path = authority = content_type = te = b""
    timeout_raw: bytes | None = None
    encoding: bytes | None = None
    accept = b""
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority" or name == b"host":
            authority = value
        elif name == b"content-type":
            content_type = value
        elif name == b"te":
            te = value
        elif name == b"grpc-timeout":
            timeout_raw = value
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"grpc-accept-encoding":
            accept = value
    if method != b"POST":
        raise NotGrpc(b"405", b"gRPC requires POST")
    if not content_type.startswith(b"application/grpc"):
        raise NotGrpc(b"415", b"content-type must be application/grpc")
    if not path.startswith(b"/"):
        # h2's header validation is off (see h2conn): we check what we rely on ourselves.
        raise Internal("malformed request: missing or invalid :path")
    if te != b"trailers":
        raise Internal('missing "te: trailers" header: not a gRPC client?')
    request_encoding = None if encoding is None else encoding.decode("latin-1")
    if request_encoding is not None and request_encoding not in codec.SUPPORTED:
        # grpc-accept-encoding is in the response headers, as compression.md asks.
        raise Unimplemented(
            f"grpc-encoding {request_encoding!r} is not supported"
            f" (supported: {codec.supported_list()})"
        )
    try:
        timeout = parse_timeout(timeout_raw) if timeout_raw is not None else None
        metadata = md.decode(headers)
    except InvalidTimeout as exc:
        raise InvalidArgument(str(exc)) from None
    except md.MetadataError as exc:
        raise Internal(str(exc)) from None
    return GrpcRequest(
        path.decode("utf-8", "replace"),
        metadata,
        timeout,
        authority.decode("latin-1"),
        request_encoding,
        accept,
    )
