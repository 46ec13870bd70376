"""protowire reads namespace and operation off the wire exactly as a full decode would, and turns
every malformed input into INVALID_ARGUMENT."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from prism import protowire
from prism._proto.google.protobuf import Any
from prism._proto.prism.proxy.v1 import ExecuteRequest, StreamRequest
from prism.grpc.wire.status import InvalidArgument

OPERATION, NAMESPACE = 1, 15
WANTED = frozenset({OPERATION, NAMESPACE})

texts = st.text(max_size=40)


@st.composite
def execute_requests(draw: st.DrawFn) -> ExecuteRequest:
    request = ExecuteRequest(
        operation=draw(texts),
        namespace=draw(texts),
        metadata=draw(st.dictionaries(texts, texts, max_size=4)),
    )
    params = draw(st.sampled_from(["none", "typed", "raw"]))
    if params == "typed":
        request.typed_params = Any(
            type_url="type.googleapis.com/" + draw(texts), value=draw(st.binary(max_size=200))
        )
    elif params == "raw":
        request.raw_params = draw(st.binary(max_size=300))
    return request


def scanned(data: bytes) -> tuple[str, str]:
    fields = protowire.scan(data, WANTED)
    return (
        protowire.text(fields.get(NAMESPACE), "namespace"),
        protowire.text(fields.get(OPERATION), "operation"),
    )


@given(execute_requests())
def test_protowire_scan_matches_full_decode(request: ExecuteRequest) -> None:
    data = bytes(request)
    decoded = ExecuteRequest.parse(data)
    assert scanned(data) == (decoded.namespace, decoded.operation)


@given(execute_requests(), execute_requests())
def test_protowire_scan_takes_the_last_occurrence_like_a_decoder(
    first: ExecuteRequest, second: ExecuteRequest
) -> None:
    # Concatenated encodings merge; for a string field the last occurrence wins.
    data = bytes(first) + bytes(second)
    decoded = ExecuteRequest.parse(data)
    assert scanned(data) == (decoded.namespace, decoded.operation)


@given(st.text(max_size=20), st.text(max_size=20), st.binary(max_size=100))
def test_protowire_scan_reads_stream_requests(namespace: str, operation: str, raw: bytes) -> None:
    data = bytes(StreamRequest(namespace=namespace, operation=operation, raw_params=raw))
    assert scanned(data) == (namespace, operation)


@given(st.binary(max_size=200))
@example(b"\x0a\x05ab")  # a length beyond the end
@example(b"\x0a")  # a key without its value
@example(b"\xff" * 11)  # a varint longer than 64 bits
@example(b"\x0b")  # wire type 3 (start group)
@example(b"\x0e")  # wire type 6 (no such thing)
@example(b"\x7a\x02\xff\xfe")  # namespace that is not UTF-8
@example(b"\x78\x01")  # namespace as a varint
@example(b"\x0d\x01\x02")  # a truncated fixed32
def test_protowire_malformed_input_is_invalid_argument(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):  # anything else fails the test
        scanned(data)


@given(st.binary(max_size=200))
def test_protowire_agrees_with_decoder_whenever_both_accept(data: bytes) -> None:
    try:
        decoded = ExecuteRequest.parse(data)
    except Exception:
        return
    try:
        result = scanned(data)
    except InvalidArgument:
        return  # stricter than the decoder is fine (e.g. invalid UTF-8 or a bad wire type)
    assert result == (decoded.namespace, decoded.operation)


def test_protowire_text_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match="field 'namespace' is not valid UTF-8"):
        protowire.text(b"\xff", "namespace")
    with pytest.raises(InvalidArgument, match="field 'operation' has the wrong wire type"):
        protowire.text(7, "operation")
    assert protowire.text(None, "operation") == ""


def test_protowire_scan_skips_fields_it_does_not_want() -> None:
    data = bytes(ExecuteRequest(namespace="kv", operation="get", raw_params=b"x" * 1000))
    assert protowire.scan(data, frozenset({NAMESPACE})) == {NAMESPACE: b"kv"}
