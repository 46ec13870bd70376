"""prism.sdk.plugin: declaring plugins and operations."""

from __future__ import annotations

import pytest
from sdk_plugins import SECRET, WidgetPlugin

from prism._proto.prism.data.v1 import GetRequest, GetResponse
from prism.sdk import BackendPlugin, Credentials, OperationContext, operation, stream_operation


def test_plugin_supported_operations_come_from_decorators_in_order() -> None:
    assert WidgetPlugin.supported_operations[:4] == ("get", "set", "echo_raw", "metadata")
    spec = WidgetPlugin.operations["echo_raw"]
    assert (spec.params, spec.result, spec.streaming, spec.method) == (
        bytes,
        bytes,
        False,
        "echo_raw",
    )
    chat = WidgetPlugin.operations["chat"]
    assert chat.streaming
    assert chat.inbound is not None


def test_plugin_subclass_inherits_and_overrides_operations() -> None:
    class Sub(WidgetPlugin):
        name = "sub"

        @operation("get", params=bytes, result=bytes)
        async def raw_get(self, params: bytes, ctx: OperationContext) -> bytes:
            return params

        async def set(self, params: object, ctx: OperationContext) -> object:  # type: ignore[override]
            return await super().set(params, ctx)  # type: ignore[arg-type]

    assert Sub.operations["get"].params is bytes
    assert Sub.operations["get"].method == "raw_get"
    assert Sub.operations["set"].method == "set"  # kept: overridden without a decorator
    assert "echo_raw" in Sub.supported_operations


def test_plugin_duplicate_operation_names_are_rejected() -> None:
    with pytest.raises(TypeError, match="declared twice"):

        class Twice(BackendPlugin):
            @operation("get", params=GetRequest, result=GetResponse)
            async def one(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
                return GetResponse()

            @operation("get", params=GetRequest, result=GetResponse)
            async def two(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
                return GetResponse()


@pytest.mark.parametrize("name", ["", "_prism.metrics", "_prism.anything"])
def test_plugin_reserved_or_empty_operation_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        operation(name, params=bytes, result=bytes)


def test_plugin_payload_types_must_be_messages_or_bytes() -> None:
    with pytest.raises(TypeError, match="params must be bytes or a betterproto2 message"):
        operation("x", params=str, result=bytes)
    with pytest.raises(TypeError, match="inbound"):
        stream_operation("x", params=bytes, result=bytes, inbound=dict)


def test_plugin_credentials_repr_names_keys_but_not_values() -> None:
    credentials = Credentials({"password": SECRET, "user": "bob"})
    assert SECRET not in repr(credentials)
    assert SECRET not in str(credentials)
    assert "password" in repr(credentials)
    assert credentials["password"] == SECRET
    assert dict(credentials) == {"password": SECRET, "user": "bob"}
