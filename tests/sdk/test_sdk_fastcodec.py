"""prism.sdk._fastcodec writes and reads exactly the bytes betterproto2 does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prism._proto.prism.data.v1 import GetManyRequest, GetManyResponse, GetResponse, SetRequest
from prism.sdk import _fastcodec
from prism.sdk.typed import pack, unpack

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
responses = st.builds(
    GetResponse,
    found=st.booleans(),
    value=st.binary(max_size=300),
    etag=st.text(max_size=40),
    ttl_remaining_ms=st.none() | INT64,
)


@given(responses)
def test_fastcodec_get_response_encodes_as_betterproto2(message: GetResponse) -> None:
    assert _fastcodec.encode(message) == bytes(message)


@given(st.lists(responses, max_size=20))
def test_fastcodec_get_many_response_encodes_as_betterproto2(items: list[GetResponse]) -> None:
    message = GetManyResponse(items=items)
    assert _fastcodec.encode(message) == bytes(message)


@given(st.lists(st.text(max_size=200), max_size=30))
def test_fastcodec_get_many_request_decodes_as_betterproto2(keys: list[str]) -> None:
    data = bytes(GetManyRequest(keys=keys))
    assert _fastcodec.decode(GetManyRequest, data) == GetManyRequest.parse(data)
    assert list(unpack(pack(GetManyRequest(keys=keys)), GetManyRequest).keys) == keys


def test_fastcodec_unusual_bytes_and_other_messages_are_betterproto2s() -> None:
    other_field = bytes(GetManyRequest(keys=["a"])) + b"\x10\x01"  # an unknown varint field
    assert _fastcodec.decode(GetManyRequest, other_field) == GetManyRequest.parse(other_field)
    message = SetRequest(key="k", value=b"v")
    assert _fastcodec.encode(message) == bytes(message)
    with_unknown = GetResponse.parse(bytes(GetResponse(found=True)) + b"\x28\x05")
    assert _fastcodec.encode(with_unknown) == bytes(with_unknown)
