"""The Execute and stream envelopes without betterproto2 read and write what betterproto2
does."""

from __future__ import annotations

from typing import Any as Any_

import betterproto2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from upb_oracle import core_oracle, wire_bytes

from prism._proto.google.protobuf import Any
from prism._proto.prism.data.v1 import GetResponse, Message
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
)
from prism._proto.prism.proxy.v1 import ExecuteRequest as ProxyExecuteRequest
from prism._proto.prism.proxy.v1 import StreamRequest as ProxyStreamRequest
from prism.grpc.wire.status import GrpcError, InvalidArgument, NotFound, Status
from prism.sdk import _envelope

texts = st.text(max_size=30)


@st.composite
def requests(draw: st.DrawFn) -> ExecuteRequest:
    request = ExecuteRequest(
        operation=draw(texts), metadata=draw(st.dictionaries(texts, texts, max_size=4))
    )
    params = draw(st.sampled_from(["none", "typed", "raw"]))
    if params == "typed":
        request.typed_params = Any(type_url=draw(texts), value=draw(st.binary(max_size=100)))
    elif params == "raw":
        request.raw_params = draw(st.binary(max_size=100))
    return request


def _read_with_betterproto(data: bytes) -> tuple[str, str, object, dict[str, str]]:
    message = ExecuteRequest.parse(data)
    field, value = betterproto2.which_one_of(message, "params")
    if isinstance(value, Any):
        value = (value.type_url, value.value)
    return message.operation, field, value, dict(message.metadata)


def _read(data: bytes) -> tuple[str, str, object, dict[str, str]]:
    envelope = _envelope.read_execute(data)
    value = envelope.params
    if isinstance(value, Any):
        value = (value.type_url, value.value)
    return envelope.operation, envelope.params_field, value, envelope.metadata


@given(requests())
def test_read_execute_matches_betterproto(request: ExecuteRequest) -> None:
    data = bytes(request)
    assert _read(data) == _read_with_betterproto(data)


@given(requests(), texts)
def test_read_execute_skips_the_proxy_namespace(request: ExecuteRequest, namespace: str) -> None:
    forwarded = ProxyExecuteRequest.parse(bytes(request))
    forwarded.namespace = namespace
    assert _read(bytes(forwarded)) == _read_with_betterproto(bytes(request))


def test_read_execute_takes_the_last_oneof_member_as_protobuf_says() -> None:
    typed = bytes(ExecuteRequest(typed_params=Any(type_url="a/b", value=b"1")))
    raw = bytes(ExecuteRequest(raw_params=b"raw"))
    assert _envelope.read_execute(typed + raw).params == b"raw"
    last = _envelope.read_execute(raw + typed)
    assert last.params_field == "typed_params"
    assert isinstance(last.params, Any)
    assert (last.params.type_url, last.params.value) == ("a/b", b"1")


def test_read_execute_merges_a_repeated_message_field_as_protobuf_says() -> None:
    first = bytes(ExecuteRequest(typed_params=Any(type_url="a/b", value=b"1")))
    second = bytes(ExecuteRequest(typed_params=Any(value=b"2")))
    envelope = _envelope.read_execute(first + second)
    assert isinstance(envelope.params, Any)
    assert (envelope.params.type_url, envelope.params.value) == ("a/b", b"2")


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # operation longer than the message
        b"\x0a\x02\xff\xfe",  # operation not UTF-8
        b"\x12\x03\x0a\x05x",  # typed_params holding a truncated type_url
        b"\x22\x02\x0a\x05",  # a metadata entry holding a truncated key
        b"\x22\x04\x12\x02\xc0\x80",  # a metadata value not UTF-8 (overlong)
        b"\x0b",  # a group without its end
        b"\x80",  # truncated key
        b"\x00\x01",  # field number 0
        b"\x1a\x01",  # raw_params past the end
    ],
)
def test_read_execute_refuses_malformed_requests(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        _envelope.read_execute(data)


UPB = core_oracle()


def _read_with_upb(data: bytes) -> tuple[str, str, object, dict[str, str]] | None:
    message: Any_ = UPB.parse("prism.plugin.v1.ExecuteRequest", data)
    if message is None:
        return None
    field = message.WhichOneof("params") or ""
    value: object = None
    if field == "typed_params":
        value = (message.typed_params.type_url, message.typed_params.value)
    elif field == "raw_params":
        value = message.raw_params
    return message.operation, field, value, dict(message.metadata)


def _read_or_none(data: bytes) -> tuple[str, str, object, dict[str, str]] | None:
    try:
        return _read(data)
    except InvalidArgument:
        return None


@given(wire_bytes(UPB.descriptor("prism.plugin.v1.ExecuteRequest")))
@example(b"\x08\x01\x0a\x01a")  # operation as a varint: unknown, as upb has it
@example(b"\x0b\x10\x01\x0c\x0a\x01a")  # an unknown group, skipped
@example(b"\x22\x05\x0a\x01k\x18\x01")  # a map entry with an unknown field: not in the map
@example(b"\x12\x04\x0b\x08\x01\x0c")  # a group inside typed_params
def test_read_execute_accepts_and_reads_exactly_what_upb_does(data: bytes) -> None:
    assert _read_or_none(data) == _read_with_upb(data), data.hex()


@given(st.binary(max_size=100))
def test_execute_result_raw_is_betterprotos_encoding(raw: bytes) -> None:
    assert _envelope.execute_result(raw) == bytes(ExecuteResponse(success=True, raw_result=raw))


@given(st.booleans(), st.binary(max_size=100))
def test_execute_result_typed_is_betterprotos_encoding(found: bool, value: bytes) -> None:
    result = GetResponse(found=found, value=value)
    packed = Any(type_url="type.googleapis.com/prism.data.v1.GetResponse", value=bytes(result))
    assert _envelope.execute_result(result) == bytes(
        ExecuteResponse(success=True, typed_result=packed)
    )


@pytest.mark.parametrize(
    "error",
    [NotFound("no such key"), InvalidArgument(""), GrpcError("odd", status=Status.UNKNOWN)],
)
def test_execute_error_is_betterprotos_encoding(error: GrpcError) -> None:
    expected = ExecuteResponse(success=False, error=error.message, error_code=int(error.status))
    assert _envelope.execute_error(error) == bytes(expected)


@st.composite
def stream_requests(draw: st.DrawFn) -> StreamRequest:
    request = StreamRequest(operation=draw(texts))
    params = draw(st.sampled_from(["none", "typed", "raw"]))
    if params == "typed":
        request.typed_params = Any(type_url=draw(texts), value=draw(st.binary(max_size=100)))
    elif params == "raw":
        request.raw_params = draw(st.binary(max_size=100))
    return request


@given(stream_requests(), texts)
def test_read_stream_request_matches_betterproto(request: StreamRequest, namespace: str) -> None:
    # As the proxy forwards it: the proxy API's StreamRequest, namespace (15) included.
    forwarded = ProxyStreamRequest.parse(bytes(request))
    forwarded.namespace = namespace
    envelope = _envelope.read_stream_request(bytes(forwarded))
    field, value = betterproto2.which_one_of(request, "params")
    assert (envelope.operation, envelope.params_field) == (request.operation, field)
    if isinstance(value, Any):
        assert isinstance(envelope.params, Any)
        assert (envelope.params.type_url, envelope.params.value) == (value.type_url, value.value)
    else:
        assert envelope.params == value
    assert envelope.metadata == {}


@given(st.binary(max_size=100))
def test_stream_result_raw_is_betterprotos_encoding(raw: bytes) -> None:
    assert _envelope.stream_result(raw) == bytes(StreamResponse(raw_result=raw))


@given(texts, st.binary(max_size=2000), st.integers(min_value=0, max_value=1 << 62))
def test_stream_result_typed_is_betterprotos_encoding(
    topic: str, payload: bytes, sequence: int
) -> None:
    message = Message(topic=topic, payload=payload, sequence=sequence)
    packed = Any(type_url="type.googleapis.com/prism.data.v1.Message", value=bytes(message))
    assert _envelope.stream_result(message) == bytes(StreamResponse(typed_result=packed))


def test_stream_final_is_betterprotos_encoding() -> None:
    assert bytes(StreamResponse(is_final=True)) == _envelope.STREAM_FINAL
