"""The client's hand-written ``prism.proxy.v1`` envelopes read as protobuf reads them, and
what comes back is checked: the expected type, or ``Internal`` saying what came instead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism._proto.google.protobuf import Any
from prism._proto.prism.data.v1 import GetResponse, SetRequest, SetResponse
from prism._proto.prism.proxy.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
)
from prism.client._envelope import (
    decode_result,
    decode_stream_response,
    encode_request,
    type_url,
)
from prism.grpc.wire.status import Internal

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(
    namespace=text,
    operation=text,
    key=text,
    value=st.binary(max_size=64),
    metadata=st.dictionaries(text, text, max_size=4),
)
def test_envelope_request_is_what_protobuf_reads(
    namespace: str, operation: str, key: str, value: bytes, metadata: dict[str, str]
) -> None:
    params = SetRequest(key=key, value=value, ttl_ms=5)
    request = ExecuteRequest.parse(encode_request(namespace, operation, params, metadata))
    assert (request.namespace, request.operation, request.metadata) == (
        namespace,
        operation,
        metadata,
    )
    assert request.typed_params is not None
    assert request.typed_params.type_url == "type.googleapis.com/prism.data.v1.SetRequest"
    assert SetRequest.parse(request.typed_params.value) == params
    assert request.raw_params is None


def test_envelope_raw_and_missing_params() -> None:
    raw = ExecuteRequest.parse(encode_request("ns", "op", b""))
    assert raw.raw_params == b""  # set, though empty: the oneof says which
    assert raw.typed_params is None
    none = StreamRequest.parse(encode_request("ns", "op", None))
    assert (none.raw_params, none.typed_params) == (None, None)
    later = StreamRequest.parse(encode_request("", "", b"more"))
    assert (later.namespace, later.operation, later.raw_params) == ("", "", b"more")


def packed(message: SetResponse | GetResponse) -> Any:
    return Any(type_url=type_url(type(message)), value=bytes(message))


def test_envelope_results_of_the_expected_type() -> None:
    typed = bytes(ExecuteResponse(typed_result=packed(SetResponse(etag="7"))))
    assert decode_result(typed, SetResponse) == SetResponse(etag="7")
    assert decode_result(bytes(ExecuteResponse(raw_result=b"\x01")), bytes) == b"\x01"
    assert decode_result(b"", bytes) == b""  # an empty raw result


@pytest.mark.parametrize(
    ("response", "expected", "message"),
    [
        (ExecuteResponse(typed_result=packed(SetResponse())), GetResponse, "got type.goog"),
        (ExecuteResponse(typed_result=Any(value=b"\x08\x01")), GetResponse, "got no type"),
        (ExecuteResponse(raw_result=b"x"), GetResponse, "got raw bytes"),
        (ExecuteResponse(typed_result=packed(SetResponse())), bytes, "got a typed"),
        (ExecuteResponse(), GetResponse, "no result"),
    ],
)
def test_envelope_unexpected_results_are_internal(
    response: ExecuteResponse, expected: type, message: str
) -> None:
    with pytest.raises(Internal, match=message):
        decode_result(bytes(response), expected)


def test_envelope_malformed_results_are_internal() -> None:
    with pytest.raises(Internal, match="malformed ExecuteResponse"):
        decode_result(b"\x22\x05ab", GetResponse)  # field 4 runs past the end
    bad_value = Any(type_url=type_url(GetResponse), value=b"\x1a\x02\xff\xfe")  # etag: bad UTF-8
    with pytest.raises(Internal, match=r"malformed prism\.data\.v1\.GetResponse"):
        decode_result(bytes(ExecuteResponse(typed_result=bad_value)), GetResponse)


def test_envelope_stream_responses() -> None:
    message = bytes(StreamResponse(typed_result=packed(GetResponse(found=True))))
    assert decode_stream_response(message, GetResponse) == (GetResponse(found=True), False)
    assert decode_stream_response(bytes(StreamResponse(is_final=True)), GetResponse) == (
        None,
        True,
    )
    assert decode_stream_response(bytes(StreamResponse(raw_result=b"r")), bytes) == (b"r", False)


def test_envelope_type_url_of_a_class_no_package_registered() -> None:
    class Loose(SetRequest):
        pass

    with pytest.raises(TypeError, match="not a message"):
        type_url(Loose)
