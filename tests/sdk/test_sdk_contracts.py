"""prism.sdk.contracts: capabilities derived from the decorators, and the contracts they cover."""

from __future__ import annotations

import pytest

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GetRequest,
    GetResponse,
    SetRequest,
    SetResponse,
)
from prism.sdk import BackendPlugin, OperationContext, operation
from prism.sdk.contracts import CONTRACTS, check_features, claimed, contract, partial
from prism.sdk.instance import open_plugin


class BasicKv(BackendPlugin):
    name = "basic-kv"

    @operation("get", params=GetRequest, result=GetResponse, features=("etag",))
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        return GetResponse()

    @operation("set", params=SetRequest, result=SetResponse, features=("ttl", "etag"))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        return DeleteResponse()

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        return ExistsResponse()


def test_contracts_supported_operations_list_names_then_features() -> None:
    assert BasicKv.supported_operations == (
        "get",
        "set",
        "delete",
        "exists",
        "get:etag",
        "set:etag",
        "set:ttl",
    )


def test_contracts_claimed_only_when_every_capability_is_there() -> None:
    # delete has no "etag" feature: kv.etag is partial, not claimed; kv.ttl lacks expire.
    assert BasicKv.contracts == ("kv.basic",)
    assert partial(BasicKv.supported_operations) == {
        "kv.etag": frozenset({"delete:etag"}),
        "kv.ttl": frozenset({"expire"}),
    }


async def test_contracts_initialize_response_carries_the_capabilities() -> None:
    async with open_plugin(BasicKv()) as instance:
        from prism._proto.prism.plugin.v1 import InitializeRequest

        response = await instance.initialize(InitializeRequest(namespace="n"))
    assert response.success
    assert tuple(response.supported_operations) == BasicKv.supported_operations
    # What a host or test suite sees over the wire is enough to know the contracts.
    assert claimed(response.supported_operations) == ("kv.basic",)


def test_contracts_a_subclass_inherits_features() -> None:
    class Sub(BasicKv):
        name = "sub"

        @operation("delete", params=DeleteRequest, result=DeleteResponse, features=("etag",))
        async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
            return DeleteResponse()

    assert Sub.contracts == ("kv.basic", "kv.etag")


@pytest.mark.parametrize(
    ("operation_name", "features", "message"),
    [
        ("set", ("etags",), "has no feature 'etags'"),
        ("delete", ("ttl",), "has no feature 'ttl'"),
        ("mine", ("Bad Name",), "malformed feature name"),
    ],
)
def test_contracts_unknown_or_malformed_features_are_refused_at_declaration(
    operation_name: str, features: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        operation(operation_name, params=bytes, result=bytes, features=features)


def test_contracts_plugin_specific_operations_may_declare_their_own_features() -> None:
    assert check_features("scan", ["cursor"]) == frozenset({"cursor"})


def test_contracts_lookup_names_the_known_contracts() -> None:
    assert contract("kv.bulk").requires == frozenset({"get_many", "set_many", "delete_many"})
    with pytest.raises(KeyError, match=r"kv\.basic"):
        contract("kv.nothing")
    assert [c.name for c in CONTRACTS] == [
        "kv.basic",
        "kv.etag",
        "kv.bulk",
        "kv.transact",
        "kv.ttl",
        "kv.list",
        "pubsub",
        "log",
        "sql",
        "sql.transaction",
        "object",
    ]
