"""prism.sdk._fastcodec writes and reads exactly the bytes betterproto2 does."""

from __future__ import annotations

import datetime

import betterproto2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism import protowire
from prism._proto.google.protobuf import Any, NullValue
from prism._proto.prism.data.v1 import (
    Array,
    DeleteRequest,
    DeleteResponse,
    ExecuteStatementRequest,
    ExistsRequest,
    ExpireRequest,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    PublishRequest,
    PublishResponse,
    Row,
    SetRequest,
    SetResponse,
    Value,
)
from prism.grpc import protocheck
from prism.grpc.wire.status import InvalidArgument
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


@given(
    st.one_of(
        st.binary(max_size=64),
        st.lists(st.text(max_size=140), max_size=12).map(lambda k: bytes(GetManyRequest(keys=k))),
        st.tuples(
            st.lists(st.text(st.characters(max_codepoint=127), max_size=20), max_size=8),
            st.binary(max_size=4),
            st.integers(min_value=0, max_value=200),
        ).map(lambda t: (bytes(GetManyRequest(keys=t[0])) + t[1])[: t[2]]),
    )
)
def test_fastcodec_checked_get_many_request_accepts_only_what_protocheck_accepts(
    data: bytes,
) -> None:
    decoded = _fastcodec.decode_checked(GetManyRequest, data)
    if decoded is None:
        return  # protocheck and the plain decoder decide, as before
    assert protocheck.check(GetManyRequest, data) is data
    assert decoded == GetManyRequest.parse(data)


def test_fastcodec_checked_get_many_request_leaves_the_unusual_to_protocheck() -> None:
    plain = bytes(GetManyRequest(keys=["a", "bc"]))
    assert _fastcodec.decode_checked(GetManyRequest, plain) == GetManyRequest(keys=["a", "bc"])
    for unusual in (
        plain[:-1],  # truncated: the last key runs past the end
        plain + b"\x0a",  # a tag without its length
        plain + b"\x10\x01",  # an unknown varint field
        bytes(GetManyRequest(keys=["é"])),  # not ASCII
        bytes(GetManyRequest(keys=["k" * 200])),  # a two-byte length
    ):
        assert _fastcodec.decode_checked(GetManyRequest, unusual) is None
    with pytest.raises(InvalidArgument, match="malformed"):
        unpack(Any(type_url=pack(GetManyRequest()).type_url, value=plain[:-1]), GetManyRequest)


def test_fastcodec_unusual_bytes_and_other_messages_are_betterproto2s() -> None:
    other_field = bytes(GetManyRequest(keys=["a"])) + b"\x10\x01"  # an unknown varint field
    assert _fastcodec.decode(GetManyRequest, other_field) == GetManyRequest.parse(other_field)
    message = SetRequest(key="k", value=b"v")
    assert _fastcodec.encode(message) == bytes(message)
    with_unknown = GetResponse.parse(bytes(GetResponse(found=True)) + b"\x28\x05")
    assert _fastcodec.encode(with_unknown) == bytes(with_unknown)


# -- flat messages: every field a singular scalar, read and written from their metadata --------

INT32 = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)
flat_messages = st.one_of(
    st.builds(GetRequest, key=st.text(max_size=40)),
    st.builds(
        SetRequest,
        key=st.text(max_size=40),
        value=st.binary(max_size=300),
        ttl_ms=INT64,
        if_match=st.text(max_size=20),
        if_absent=st.booleans(),
    ),
    st.builds(SetResponse, etag=st.text(max_size=20)),
    st.builds(DeleteRequest, key=st.text(max_size=40), if_match=st.text(max_size=20)),
    st.builds(DeleteResponse, deleted=st.booleans()),
    st.builds(ExistsRequest, key=st.text(max_size=40)),
    st.builds(ExpireRequest, key=st.text(max_size=40), ttl_ms=INT64, persist=st.booleans()),
    st.builds(
        ListKeysRequest,
        prefix=st.text(max_size=40),
        limit=INT32,
        start_after=st.text(max_size=40),
    ),
    st.builds(PublishResponse, sequence=INT64),
    responses,  # GetResponse: optional ttl_remaining_ms
)


@given(flat_messages)
def test_fastcodec_flat_message_encodes_and_decodes_as_betterproto2(
    message: betterproto2.Message,
) -> None:
    data = bytes(message)
    assert _fastcodec.encode(message) == data
    decoded = _fastcodec.decode(type(message), data)
    assert decoded == type(message).parse(data) == message
    assert decoded._unknown_fields == b""


FLAT_TYPES = [GetRequest, SetRequest, DeleteRequest, ExpireRequest, ListKeysRequest, GetResponse]


@given(st.sampled_from(FLAT_TYPES), st.binary(max_size=60))
def test_fastcodec_flat_decoder_reads_any_accepted_bytes_as_betterproto2(
    cls: type[betterproto2.Message], data: bytes
) -> None:
    """Whatever protocheck accepts (the only bytes a decoder is given), the fast decoder reads
    as betterproto2 does, unknown fields and odd wire types included (it leaves those to
    betterproto2), and a failure is a failure for both."""
    reads_as_betterproto2(cls, data)


def reads_as_betterproto2(cls: type[betterproto2.Message], data: bytes) -> None:
    try:
        checked = protocheck.check(cls, data)
    except protocheck.MalformedMessage:
        return  # the front door would have refused these bytes
    try:
        expected = cls.parse(checked)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017, PT011 (betterproto2's own, whatever it is)
            _fastcodec.decode(cls, checked)
        return
    decoded = _fastcodec.decode(cls, checked)
    assert decoded == expected
    assert decoded._unknown_fields == expected._unknown_fields
    assert bytes(decoded) == bytes(expected)


@given(st.text(max_size=30), st.integers(min_value=-(1 << 70), max_value=1 << 70))
def test_fastcodec_flat_varints_wrap_as_betterproto2(key: str, number: int) -> None:
    """A varint wider than its field (int32 sent as a 64-bit value, int64 past 2**63) is cut
    to the field's width, as protobuf (and betterproto2) read it."""
    varint = protowire.encode_varint(number & ((1 << 64) - 1))
    data = bytes(ListKeysRequest(prefix=key)) + b"\x10" + varint
    assert _fastcodec.decode(ListKeysRequest, data) == ListKeysRequest.parse(data)
    data = bytes(ExpireRequest(key=key)) + b"\x10" + varint
    assert _fastcodec.decode(ExpireRequest, data) == ExpireRequest.parse(data)


def test_fastcodec_messages_with_other_fields_are_betterproto2s() -> None:
    """Messages with a repeated, map or message field get no flat codec: betterproto2's."""
    message = ListKeysResponse(keys=["a", "b"], truncated=True)
    assert _fastcodec.encode(message) == bytes(message)
    assert _fastcodec.decode(ListKeysResponse, bytes(message)) == message
    published = PublishRequest(topic="t", payload=b"p", headers={"k": "v"})
    assert _fastcodec.decode(PublishRequest, bytes(published)) == published


# -- ExecuteStatementRequest: the sql contract's batches ---------------------------------------

SCALAR_VALUES = st.one_of(
    st.just(Value()),
    st.just(Value(null_value=NullValue.NULL_VALUE)),
    st.builds(lambda b: Value(bool_value=b), st.booleans()),
    st.builds(lambda n: Value(int64_value=n), INT64),
    st.builds(lambda d: Value(double_value=d), st.floats(allow_nan=False)),
    st.builds(lambda t: Value(string_value=t), st.text(max_size=200)),
    st.builds(lambda t: Value(json_value=t), st.text(max_size=40)),
    st.builds(lambda b: Value(bytes_value=b), st.binary(max_size=200)),
)
VALUES = st.recursive(
    SCALAR_VALUES,
    lambda inner: st.builds(
        lambda items: Value(array_value=Array(values=items)), st.lists(inner, max_size=4)
    ),
    max_leaves=12,
)
STATEMENTS = st.builds(
    ExecuteStatementRequest,
    sql=st.text(max_size=300),
    params=st.lists(VALUES, max_size=5),
    batch=st.lists(st.builds(Row, values=st.lists(VALUES, max_size=5)), max_size=8),
)


@given(STATEMENTS)
def test_fastcodec_execute_statement_request_decodes_as_betterproto2(
    message: ExecuteStatementRequest,
) -> None:
    data = bytes(message)
    fast = _fastcodec._execute_statement_request(data)
    assert fast is not None  # every kind here is the fast decoder's
    assert fast == ExecuteStatementRequest.parse(data) == message


@given(st.binary(max_size=80))
def test_fastcodec_execute_statement_request_reads_any_accepted_bytes_as_betterproto2(
    data: bytes,
) -> None:
    reads_as_betterproto2(ExecuteStatementRequest, data)


def test_fastcodec_execute_statement_request_leaves_the_unusual_to_betterproto2() -> None:
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    with_timestamp = ExecuteStatementRequest(
        sql="INSERT", batch=[Row(values=[Value(timestamp_value=moment)])]
    )
    data = bytes(with_timestamp)
    assert _fastcodec._execute_statement_request(data) is None
    assert _fastcodec.decode(ExecuteStatementRequest, data) == with_timestamp
    twice = bytes(ExecuteStatementRequest(sql="a")) + bytes(ExecuteStatementRequest(sql="b"))
    assert _fastcodec._execute_statement_request(twice) is None  # the last one wins: betterproto2
    assert _fastcodec.decode(ExecuteStatementRequest, twice).sql == "b"
