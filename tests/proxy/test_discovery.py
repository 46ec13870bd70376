"""Discovery over a real front door: DescribeNamespace and ListAccessibleNamespaces with prism's
client and with grpcio, for in-process and sidecar plugins (the sidecar answers the reserved
``_prism.describe`` over its own gRPC socket), filtered by what the caller is authorized for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from authz_testkit import proxy, who
from host_testkit import proxy_config, running_proxy

import prism.client
from prism._proto.prism.proxy.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    ListAccessibleNamespacesRequest,
    ListAccessibleNamespacesResponse,
)
from prism.config import NamespaceConfig, PluginConfig

HERE = Path(__file__).resolve().parent
MEMSTORE_OPERATIONS = [
    "get",
    "set",
    "delete",
    "exists",
    "expire",
    "list_keys",
    "get_many",
    "set_many",
    "delete_many",
    "transact",
    "set_raw",
    "get_raw",
    "publish",
    "subscribe",
    "produce",
    "consume",
]


def namespaces() -> tuple[NamespaceConfig, ...]:
    sidecar = PluginConfig("memstore", mode="sidecar")
    readers = [{"subject": "reader", "operations": ["get", "exists", "list_*", "subscribe"]}]
    return (
        NamespaceConfig("open", PluginConfig("memstore"), access={"anonymous": True}),
        NamespaceConfig("side", sidecar, access={"anonymous": True}),
        NamespaceConfig("private", PluginConfig("memstore")),
        NamespaceConfig("ruled", PluginConfig("memstore"), access={"rules": readers}),
    )


async def test_discovery_describe_lists_every_operation_with_its_types() -> None:
    async with proxy(*namespaces()) as running, prism.client.connect(running.target) as client:
        for name in ("open", "side"):  # in-process, and a sidecar over its socket
            described = await client.describe(name)
            assert described.namespace == name
            assert described.plugin == "memstore"
            assert described.plugin_version
            assert [op.name for op in described.operations] == MEMSTORE_OPERATIONS
            get = described.operation("get")
            assert (get.params_type, get.result_type, get.streaming) == (
                "prism.data.v1.GetRequest",
                "prism.data.v1.GetResponse",
                False,
            )
            assert get.features == ("etag", "ttl")
            raw = described.operation("set_raw")
            assert (raw.params_type, raw.result_type) == ("bytes", "bytes")
            subscribe = described.operation("subscribe")
            assert subscribe.streaming
            assert (subscribe.params_type, subscribe.result_type, subscribe.inbound_type) == (
                "prism.data.v1.SubscribeRequest",
                "prism.data.v1.Message",
                "",
            )
            consume = described.operation("consume")
            assert consume.streaming
            assert (consume.params_type, consume.result_type, consume.inbound_type) == (
                "prism.data.v1.ConsumeRequest",
                "prism.data.v1.LogRecord",
                "prism.data.v1.ConsumeAck",
            )


async def test_discovery_shows_callers_only_what_they_may_use() -> None:
    async with proxy(*namespaces()) as running:
        async with prism.client.connect(running.target) as anonymous:
            assert await anonymous.namespaces() == ["open", "side"]
            with pytest.raises(prism.client.PermissionDenied) as info:
                await anonymous.describe("private")
            assert info.value.message == "caller may not use namespace 'private'"
            with pytest.raises(prism.client.PermissionDenied):
                await anonymous.describe("ruled")
            with pytest.raises(prism.client.NotFound):
                await anonymous.describe("nowhere")
            with pytest.raises(prism.client.InvalidArgument):
                await anonymous.describe("")
        async with prism.client.connect(running.target, metadata=who("reader")) as reader:
            # "open" and "side" admit callers without credentials only: a caller with
            # them may use them too (no rules there).
            assert await reader.namespaces() == ["open", "private", "ruled", "side"]
            ruled = await reader.describe("ruled")
            assert [op.name for op in ruled.operations] == [
                "get",
                "exists",
                "list_keys",
                "subscribe",
            ]
        async with prism.client.connect(running.target, metadata=who("writer")) as writer:
            assert await writer.namespaces() == ["open", "private", "side"]
            with pytest.raises(prism.client.PermissionDenied):
                await writer.describe("ruled")


async def test_discovery_of_a_plugin_not_built_on_the_sdk_lists_its_declared_names() -> None:
    legacy = PluginConfig(
        "legacy", mode="sidecar", command=[sys.executable, str(HERE / "legacy_plugin.py")]
    )
    config = proxy_config(NamespaceConfig("legacy", legacy, access={"anonymous": True}))
    async with running_proxy(config) as running, prism.client.connect(running.target) as client:
        assert await client.execute("legacy", "ping", b"", bytes) == b"pong"
        described = await client.describe("legacy")
        assert (described.plugin, described.plugin_version) == ("legacy", "0.9")
        assert [
            (op.name, op.params_type, op.result_type, op.features) for op in described.operations
        ] == [
            ("get", "", "", ("etag",)),
            ("ping", "", "", ()),
        ]


def test_discovery_with_grpcio() -> None:
    """grpcio's client sees the same answers (the messages are the client API's protos)."""

    async def main() -> None:
        async with proxy(*namespaces()) as running:
            target = running.target

            def blocking() -> tuple[Any, Any, Any]:
                with grpc.insecure_channel(target) as channel:
                    describe = channel.unary_unary(
                        "/prism.proxy.v1.DataProxy/DescribeNamespace",
                        request_serializer=bytes,
                        response_deserializer=DescribeNamespaceResponse.parse,
                    )
                    listing = channel.unary_unary(
                        "/prism.proxy.v1.DataProxy/ListAccessibleNamespaces",
                        request_serializer=bytes,
                        response_deserializer=ListAccessibleNamespacesResponse.parse,
                    )
                    described = describe(DescribeNamespaceRequest(namespace="open"), timeout=30)
                    names = listing(ListAccessibleNamespacesRequest(), timeout=30)
                    try:
                        describe(DescribeNamespaceRequest(namespace="private"), timeout=30)
                    except grpc.RpcError as exc:
                        return described, names, exc
                raise AssertionError("describe of 'private' was allowed")

            described, names, error = await trio.to_thread.run_sync(blocking)
            assert [op.name for op in described.operations] == MEMSTORE_OPERATIONS
            assert [ns.name for ns in names.namespaces] == ["open", "side"]
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    trio.run(main)
