"""prism.grpc.wire.grpc_request: a request's headers, read and checked."""

from __future__ import annotations

import pytest

from prism.grpc.wire.grpc_request import NotGrpc, parse_request
from prism.grpc.wire.status import GrpcError, Status

HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Svc/Get"),
    (b":authority", b"example:50051"),
    (b"content-type", b"application/grpc+proto"),
    (b"te", b"trailers"),
]


def _with(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in HEADERS if k != name]
    return headers if value is None else [*headers, (name, value)]


def test_parse_request_reads_a_grpc_call() -> None:
    headers = [
        *HEADERS,
        (b"grpc-timeout", b"30S"),
        (b"grpc-encoding", b"gzip"),
        (b"grpc-accept-encoding", b"gzip,identity"),
        (b"x-user", b"alice"),
    ]
    request = parse_request(headers)
    assert request.path == "/pkg.Svc/Get"
    assert request.authority == "example:50051"
    assert request.timeout == 30.0
    assert request.encoding == "gzip"
    assert request.accept_encoding == b"gzip,identity"
    assert request.metadata == [("x-user", "alice")]


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [(b":method", b"GET", b"405"), (b"content-type", b"text/html", b"415")],
)
def test_parse_request_refuses_what_is_not_grpc(name: bytes, value: bytes, status: bytes) -> None:
    with pytest.raises(NotGrpc) as caught:
        parse_request(_with(name, value))
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        (b":path", b"pkg.Svc/Get", Status.INTERNAL),
        (b"te", None, Status.INTERNAL),
        (b"grpc-encoding", b"br", Status.UNIMPLEMENTED),
        (b"grpc-timeout", b"1000000000S", Status.INVALID_ARGUMENT),
        (b"x-bin-bin", b"!!", Status.INTERNAL),
    ],
)
def test_parse_request_answers_a_broken_call_with_its_status(
    name: bytes, value: bytes | None, status: Status
) -> None:
    with pytest.raises(GrpcError) as caught:
        parse_request(_with(name, value))
    assert caught.value.status is status
