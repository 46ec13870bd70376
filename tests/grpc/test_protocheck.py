"""prism.grpc.protocheck accepts exactly the bytes protobuf's reference parser (upb) accepts, and
what it accepts decodes through betterproto2 to the values upb decodes."""

from __future__ import annotations

from typing import Any

import betterproto2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from upb_oracle import (
    TESTS,
    Compiled,
    Oracle,
    canon_betterproto,
    canon_upb,
    compile_protos,
    core_oracle,
    varint,
    wire_bytes,
)

from prism._proto.google.protobuf import Any as AnyMessage
from prism._proto.google.protobuf import ListValue, Struct
from prism._proto.grpc.reflection.v1 import ServerReflectionRequest
from prism._proto.prism.admin.v1 import ListNamespacesResponse
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.data.v1 import PublishRequest, SetRequest
from prism._proto.prism.plugin.v1 import ExecuteRequest, HealthCheckResponse, InitializeRequest
from prism.grpc import protocheck
from prism.grpc.wire.status import InvalidArgument

CORE = core_oracle()

CORE_TYPES: list[type[betterproto2.Message]] = [
    SetRequest,  # scalars
    PublishRequest,  # a map of strings
    ExecuteRequest,  # a oneof of a message and bytes, an Any, a map
    InitializeRequest,  # nested messages, a map
    HealthCheckResponse,  # an enum, a map
    AnyMessage,
    Struct,  # recursive: Struct → Value → Struct / ListValue, a oneof, doubles
    ConfigDocument,
    ListNamespacesResponse,  # repeated messages, uint64, double
    ServerReflectionRequest,  # a oneof of strings
]


def _full_name(cls: type[betterproto2.Message]) -> str:
    return protocheck.message_name(cls)


def _prism(cls: type[betterproto2.Message], data: bytes) -> betterproto2.Message | None:
    try:
        return protocheck.parse(cls, data)
    except InvalidArgument:
        return None


def _assert_same_as_upb(oracle: Oracle, cls: type[betterproto2.Message], data: bytes) -> None:
    expected = oracle.parse(_full_name(cls), data)
    got = _prism(cls, data)
    if expected is None:
        assert got is None, f"upb rejects {data.hex()}, prism accepted {got!r}"
        return
    assert got is not None, f"upb accepts {data.hex()}, prism rejected it"
    assert canon_betterproto(got) == canon_upb(expected), data.hex()


@pytest.mark.parametrize("cls", CORE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_protocheck_core_messages_match_upb(cls: type[betterproto2.Message], data: Any) -> None:
    raw = data.draw(wire_bytes(CORE.descriptor(_full_name(cls))))
    _assert_same_as_upb(CORE, cls, raw)


@pytest.fixture(scope="session")
def kitchen(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """tests/protos/pcheck/v1/kitchen.proto: every field kind, compiled for both parsers."""
    out = tmp_path_factory.mktemp("kitchen")
    return compile_protos(out, "pcheck_proto", TESTS / "protos", "pcheck/v1/kitchen.proto")


def _kitchen_types(kitchen: Compiled) -> dict[str, type[betterproto2.Message]]:
    module: Any = __import__(f"{kitchen.package.__name__}.pcheck.v1", fromlist=["Kitchen"])
    return {"Kitchen": module.Kitchen, "Leaf": module.Leaf}


@pytest.mark.parametrize("name", ["Kitchen", "Leaf"])
@given(data=st.data())
def test_protocheck_every_field_kind_matches_upb(kitchen: Compiled, name: str, data: Any) -> None:
    cls = _kitchen_types(kitchen)[name]
    raw = data.draw(wire_bytes(kitchen.oracle.descriptor(f"pcheck.v1.{name}")))
    _assert_same_as_upb(kitchen.oracle, cls, raw)


# -- the cases by name (each also a regression example of the properties above) ---------------

MALFORMED_SET_REQUESTS = {
    "0a056162": "field 1 (key) runs past the end of its message",  # the example
    "0a": "field 1 (key): truncated length",
    "08": "field 1 (key): truncated varint",
    "18" + "ff" * 10 + "01": "field 3 (ttl_ms): varint longer than 10 bytes",
    "1d0000": "field 3 (ttl_ms): truncated fixed32",
    "0e": "field 1 (key): invalid wire type 6",
    "0f": "field 1 (key): invalid wire type 7",
    "0001": "field number 0",
    "f8ffffff1f00": "field tag longer than 5 bytes or above 2**32-1",
    "0b": "group 1 without its end",
    "0c": "end of group 1 without its start",
    "0b14": "group 1 ended by the end of group 2",
    "0a02fffe": "field 1 (key): invalid UTF-8",
    "0a03eda080": "field 1 (key): invalid UTF-8",  # a UTF-16 surrogate
}


@pytest.mark.parametrize(("hex_bytes", "reason"), MALFORMED_SET_REQUESTS.items())
def test_protocheck_rejects_what_upb_rejects_with_a_clear_reason(
    hex_bytes: str, reason: str
) -> None:
    data = bytes.fromhex(hex_bytes)
    assert CORE.parse("prism.data.v1.SetRequest", data) is None
    with pytest.raises(protocheck.MalformedMessage) as info:
        protocheck.parse(SetRequest, data)
    assert info.value.status is InvalidArgument.status
    assert info.value.message == f"malformed prism.data.v1.SetRequest: {reason}"


ACCEPTED_SET_REQUESTS = {
    "0b1a0261620c": SetRequest(),  # an unknown group, skipped whole
    "0b13140c": SetRequest(),  # nested groups, ended in order
    "0a01610a0162": SetRequest(key="b"),  # last one wins
    "08010a0161": SetRequest(key="a"),  # field 1 as a varint: unknown, the string stays
    "1a03ffffff": SetRequest(),  # ttl_ms length-delimited: unknown
    "f8ffffff0f00": SetRequest(),  # the largest field number, unknown
    "888080800001": SetRequest(),  # a 5-byte tag for field 1, as a varint: unknown
    "18" + "ff" * 9 + "7f": SetRequest(ttl_ms=-1),  # bits past 64 are dropped
}


@pytest.mark.parametrize(("hex_bytes", "expected"), ACCEPTED_SET_REQUESTS.items())
def test_protocheck_accepts_what_upb_accepts(hex_bytes: str, expected: SetRequest) -> None:
    data = bytes.fromhex(hex_bytes)
    assert CORE.parse("prism.data.v1.SetRequest", data) is not None
    assert protocheck.parse(SetRequest, data) == expected


def test_protocheck_nested_malformed_message_names_its_path() -> None:
    entry = bytes.fromhex("0a056162")  # a Struct.fields entry whose key is cut short
    with pytest.raises(protocheck.MalformedMessage) as info:
        protocheck.parse(Struct, b"\x0a" + varint(len(entry)) + entry)
    assert info.value.reason == "field 1 (fields): field 1 (key) runs past the end of its message"


def _nested_list(levels: int, inner: bytes = b"") -> bytes:
    """A ListValue nesting ``2 * levels`` messages (ListValue → Value → ListValue ...)."""
    data = inner
    for _ in range(levels):
        value = b"\x32" + varint(len(data)) + data  # Value.list_value
        data = b"\x0a" + varint(len(value)) + value  # ListValue.values
    return data


@pytest.mark.parametrize(
    ("levels", "groups"), [(50, 0), (51, 0), (49, 1), (49, 2), (49, 3), (0, 100), (0, 101)]
)
def test_protocheck_nesting_limit_is_upbs(levels: int, groups: int) -> None:
    data = _nested_list(levels, b"\x1b" * groups + b"\x1c" * groups)
    upb_accepts = CORE.parse("google.protobuf.ListValue", data) is not None
    assert (_prism(ListValue, data) is not None) == upb_accepts
    assert upb_accepts == (2 * levels + groups <= protocheck.MAX_DEPTH)


def test_protocheck_merges_a_message_field_seen_twice() -> None:
    first = bytes(ExecuteRequest(typed_params=AnyMessage(type_url="t/x")))
    second = bytes(ExecuteRequest(typed_params=AnyMessage(value=b"v")))
    decoded = protocheck.parse(ExecuteRequest, first + second)
    assert decoded.typed_params == AnyMessage(type_url="t/x", value=b"v")


def test_protocheck_oneof_keeps_only_the_last_member() -> None:
    typed = bytes(ExecuteRequest(typed_params=AnyMessage(type_url="t/x")))
    raw = bytes(ExecuteRequest(raw_params=b"r"))
    decoded = protocheck.parse(ExecuteRequest, typed + raw)
    assert betterproto2.which_one_of(decoded, "params") == ("raw_params", b"r")
    decoded = protocheck.parse(ExecuteRequest, raw + typed)
    assert betterproto2.which_one_of(decoded, "params") == (
        "typed_params",
        AnyMessage(type_url="t/x"),
    )


def test_protocheck_leaves_well_formed_bytes_untouched() -> None:
    data = bytes(SetRequest(key="k", value=b"v", ttl_ms=5))
    assert protocheck.check(SetRequest, data) is data


@example(b"")
@given(st.binary(max_size=60))
def test_protocheck_bytes_that_betterproto_wrote_decode_unchanged(value: bytes) -> None:
    message = PublishRequest(topic="t", payload=value, headers={"a": "b"})
    assert protocheck.parse(PublishRequest, bytes(message)) == message
