"""prism.sdk.typed: Any packing for messages of any generated package."""

from __future__ import annotations

from dataclasses import dataclass

import betterproto2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sdk_plugins import WidgetConfig

from prism._proto.google.protobuf import Any
from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.plugin.v1 import PluginMetrics
from prism.sdk import InvalidArgument, pack, type_url, unpack


def test_typed_type_url_has_the_googleapis_prefix() -> None:
    assert type_url(GetRequest) == "type.googleapis.com/prism.data.v1.GetRequest"
    assert type_url(PluginMetrics) == "type.googleapis.com/prism.plugin.v1.PluginMetrics"


def test_typed_works_for_a_message_of_another_package_pool() -> None:
    # betterproto2's own Any.pack looks only in the core's pool and cannot do this.
    assert type_url(WidgetConfig) == "type.googleapis.com/test.widget.v1.WidgetConfig"
    config = WidgetConfig(path="/x", limit=3, tags=["a"])
    assert unpack(Any.parse(bytes(pack(config))), WidgetConfig) == config


@given(key=st.text(), value=st.binary(), ttl=st.integers(-(2**63), 2**63 - 1))
def test_typed_pack_unpack_round_trips(key: str, value: bytes, ttl: int) -> None:
    message = SetRequest(key=key, value=value, ttl_ms=ttl)
    assert unpack(Any.parse(bytes(pack(message))), SetRequest) == message


def test_typed_unpack_other_type_names_expected_and_got() -> None:
    with pytest.raises(InvalidArgument) as info:
        unpack(pack(SetRequest(key="k")), GetRequest)
    assert info.value.message == (
        "expected prism.data.v1.GetRequest, got type.googleapis.com/prism.data.v1.SetRequest"
    )


@pytest.mark.parametrize("missing", [None, Any()])
def test_typed_unpack_nothing_is_invalid_argument(missing: Any | None) -> None:
    with pytest.raises(InvalidArgument, match="got nothing"):
        unpack(missing, GetRequest)


def test_typed_unpack_accepts_any_type_url_prefix() -> None:
    any_ = Any(type_url="example.com/types/prism.data.v1.GetRequest", value=b"\x0a\x01k")
    assert unpack(any_, GetRequest) == GetRequest(key="k")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x0a\xff", "field 1 (key): truncated varint"),  # a length varint cut short
        (b"\x0a\x05ab", "field 1 (key) runs past the end of its message"),
        (b"\x0a\x02\xff\xfe", "field 1 (key): invalid UTF-8"),
        (b"\x13", "group 2 without its end"),
    ],
)
def test_typed_unpack_malformed_bytes_is_invalid_argument_saying_why(
    value: bytes, reason: str
) -> None:
    # betterproto2 alone reads the second as key "ab" and the fourth as an empty message.
    with pytest.raises(InvalidArgument) as info:
        unpack(Any(type_url=type_url(GetRequest), value=value), GetRequest)
    assert info.value.message == f"expected prism.data.v1.GetRequest, got malformed bytes: {reason}"


def test_typed_unpack_a_plugins_own_message_is_checked_by_its_own_schema() -> None:
    # WidgetConfig.path is field 1, a string: an invalid one is rejected in its own package.
    with pytest.raises(InvalidArgument, match=r"field 1 \(path\): invalid UTF-8"):
        unpack(Any(type_url=type_url(WidgetConfig), value=b"\x0a\x01\xff"), WidgetConfig)


def test_typed_type_url_of_an_unregistered_class_is_a_type_error() -> None:
    @dataclass(eq=False, repr=False)
    class Stray(betterproto2.Message):
        name: str = betterproto2.field(1, betterproto2.TYPE_STRING)

    with pytest.raises(TypeError, match="not a message of a betterproto2-generated package"):
        type_url(Stray)
