"""prism.sdk.keyvalue: the limits and request checks every key-value plugin gets from the SDK,
seen through a plugin that records what reached its handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from prism._proto.prism.data.v1 import (
    DeleteManyRequest,
    DeleteManyResponse,
    DeleteRequest,
    DeleteResponse,
    ExecuteStatementRequest,
    ExecuteStatementResponse,
    ExpireRequest,
    ExpireResponse,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    Row,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    TransactOperation,
    TransactRequest,
    TransactResponse,
    Value,
)
from prism.sdk import (
    BackendPlugin,
    InvalidArgument,
    OperationContext,
    Unimplemented,
    operation,
)
from prism.sdk.keyvalue import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES, KeyValueLimits
from prism.sdk.testing import PluginHarness


class Recorder(BackendPlugin):
    """Declares etag on set only, ttl nowhere; limits from credentials (for the test)."""

    name = "recorder"
    config_required = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    async def initialize(self, config: Any, credentials: Mapping[str, str], namespace: str) -> None:
        if "max_key_bytes" in credentials:
            self.kv_limits = KeyValueLimits.from_config(
                max_key_bytes=int(credentials["max_key_bytes"]),
                max_value_bytes=int(credentials["max_value_bytes"]),
                max_batch=int(credentials["max_batch"]),
            )

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        self.seen.append("get")
        return GetResponse()

    @operation("set", params=SetRequest, result=SetResponse, features=("etag",))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        self.seen.append("set")
        return SetResponse()

    @operation("delete", params=DeleteRequest, result=DeleteResponse)
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        self.seen.append("delete")
        return DeleteResponse()

    @operation("expire", params=ExpireRequest, result=ExpireResponse)
    async def expire(self, params: ExpireRequest, ctx: OperationContext) -> ExpireResponse:
        self.seen.append("expire")
        return ExpireResponse()

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        self.seen.append("list_keys")
        return ListKeysResponse()

    @operation("get_many", params=GetManyRequest, result=GetManyResponse)
    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        self.seen.append("get_many")
        return GetManyResponse()

    @operation("set_many", params=SetManyRequest, result=SetManyResponse, features=("ttl",))
    async def set_many(self, params: SetManyRequest, ctx: OperationContext) -> SetManyResponse:
        self.seen.append("set_many")
        return SetManyResponse()

    @operation("delete_many", params=DeleteManyRequest, result=DeleteManyResponse)
    async def delete_many(
        self, params: DeleteManyRequest, ctx: OperationContext
    ) -> DeleteManyResponse:
        self.seen.append("delete_many")
        return DeleteManyResponse()

    @operation("transact", params=TransactRequest, result=TransactResponse, features=("etag",))
    async def transact(self, params: TransactRequest, ctx: OperationContext) -> TransactResponse:
        self.seen.append("transact")
        return TransactResponse()


class Override(Recorder):
    """Overrides a handler without re-decorating it: the check must stay in front."""

    name = "override"

    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        self.seen.append("override-get")
        return GetResponse(found=True)


SMALL = {"max_key_bytes": "8", "max_value_bytes": "4", "max_batch": "2"}


def tx(*ops: SetRequest | DeleteRequest) -> TransactRequest:
    return TransactRequest(
        operations=[
            TransactOperation(set=op)
            if isinstance(op, SetRequest)
            else TransactOperation(delete=op)
            for op in ops
        ]
    )


REFUSED = [
    # (operation, params, error, message)
    ("get", GetRequest(key=""), InvalidArgument, "key must not be empty"),
    ("get", GetRequest(key="k" * (DEFAULT_MAX_KEY_BYTES + 1)), InvalidArgument, "longer than"),
    ("get", GetRequest(key="é" * (DEFAULT_MAX_KEY_BYTES // 2 + 1)), InvalidArgument, "longer"),
    ("get", GetRequest(key="k" * (1 << 20)), InvalidArgument, "longer than the limit of 1024"),
    (
        "set",
        SetRequest(key="k", value=b"v" * (DEFAULT_MAX_VALUE_BYTES + 1)),
        InvalidArgument,
        "over the limit",
    ),
    ("set", SetRequest(key="k", ttl_ms=-1), InvalidArgument, "ttl_ms must not be negative"),
    ("set", SetRequest(key="k", ttl_ms=10), Unimplemented, "does not support ttl_ms"),
    (
        "set",
        SetRequest(key="k", if_match="e", if_absent=True),
        InvalidArgument,
        "exclude each other",
    ),
    ("delete", DeleteRequest(key="k", if_match="e"), Unimplemented, "'etag' feature"),
    ("expire", ExpireRequest(key="k"), InvalidArgument, "either ttl_ms > 0 or persist"),
    ("expire", ExpireRequest(key="k", ttl_ms=5, persist=True), InvalidArgument, "not both"),
    ("expire", ExpireRequest(key="k", ttl_ms=-5), InvalidArgument, "negative"),
    ("list_keys", ListKeysRequest(prefix="p" * 2000), InvalidArgument, "prefix is longer"),
    ("list_keys", ListKeysRequest(limit=-1), InvalidArgument, "limit must not be negative"),
    ("get_many", GetManyRequest(keys=["a", ""]), InvalidArgument, r"keys\[1\] must not be empty"),
    (
        "get_many",
        GetManyRequest(keys=["a", "b", "k" * (DEFAULT_MAX_KEY_BYTES + 1)]),
        InvalidArgument,
        r"keys\[2\] is longer than the limit",
    ),
    (
        "get_many",
        GetManyRequest(keys=["a" * 300, "é" * (DEFAULT_MAX_KEY_BYTES // 2 + 1)]),
        InvalidArgument,
        r"keys\[1\] is longer",
    ),
    (
        "set_many",
        SetManyRequest(items=[SetRequest(key="a"), SetRequest(key="b", if_absent=True)]),
        Unimplemented,
        "does not support if_match/if_absent",
    ),
    (
        "delete_many",
        DeleteManyRequest(items=[DeleteRequest(key="")]),
        InvalidArgument,
        r"items\[0\]\.key",
    ),
    ("transact", TransactRequest(operations=[TransactOperation()]), InvalidArgument, "neither"),
    ("transact", tx(SetRequest(key="a", ttl_ms=5)), Unimplemented, "ttl_ms"),
    ("transact", tx(DeleteRequest(key="x" * 5000)), InvalidArgument, r"operations\[0\]\.key"),
]


@pytest.mark.parametrize(("op", "params", "error", "message"), REFUSED)
async def test_keyvalue_bad_requests_never_reach_the_handler(
    op: str, params: Any, error: type[Exception], message: str
) -> None:
    async with PluginHarness(Recorder) as h:
        with pytest.raises(error, match=message):
            await h.execute(op, params)
        assert h.plugin.seen == []  # type: ignore[attr-defined]


ACCEPTED = [
    ("get", GetRequest(key="k" * DEFAULT_MAX_KEY_BYTES)),
    ("get", GetRequest(key="é" * (DEFAULT_MAX_KEY_BYTES // 2))),
    ("get_many", GetManyRequest(keys=["a", "k" * DEFAULT_MAX_KEY_BYTES, "é" * 512])),
    ("set", SetRequest(key="k", value=b"v" * DEFAULT_MAX_VALUE_BYTES, if_match="e")),
    ("set", SetRequest(key="k", if_absent=True)),
    ("expire", ExpireRequest(key="k", persist=True)),
    ("list_keys", ListKeysRequest()),
    ("set_many", SetManyRequest(items=[SetRequest(key="a", ttl_ms=5)])),
    ("transact", tx(SetRequest(key="a", if_match="e"), DeleteRequest(key="b", if_match="e"))),
]


@pytest.mark.parametrize(("op", "params"), ACCEPTED)
async def test_keyvalue_requests_within_limits_and_features_reach_the_handler(
    op: str, params: Any
) -> None:
    async with PluginHarness(Recorder) as h:
        await h.execute(op, params)
        assert h.plugin.seen == [op]  # type: ignore[attr-defined]


@pytest.mark.parametrize("typed", [False, True])
async def test_keyvalue_configured_limits_replace_the_defaults(typed: bool) -> None:
    async with PluginHarness(Recorder, credentials=SMALL, typed=typed) as h:
        await h.execute("set", SetRequest(key="k" * 8, value=b"vvvv"))
        with pytest.raises(InvalidArgument, match="limit of 8 bytes"):
            await h.execute("get", GetRequest(key="k" * 9))
        with pytest.raises(InvalidArgument, match="5 bytes, over the limit of 4"):
            await h.execute("set", SetRequest(key="k", value=b"vvvvv"))
        with pytest.raises(InvalidArgument, match="3 keys, over the limit of 2"):
            await h.execute("get_many", GetManyRequest(keys=["a", "b", "c"]))
        assert h.plugin.seen == ["set"]  # type: ignore[attr-defined]


async def test_keyvalue_negative_configured_limit_fails_initialize() -> None:
    with pytest.raises(InvalidArgument, match=r"config\.max_batch: must not be negative$"):
        async with PluginHarness(Recorder, credentials={**SMALL, "max_batch": "-1"}):
            pass


async def test_keyvalue_an_undecorated_override_keeps_the_check() -> None:
    async with PluginHarness(Override) as h:
        with pytest.raises(InvalidArgument):
            await h.execute("get", GetRequest(key=""))
        assert await h.execute("get", GetRequest(key="k")) == GetResponse(found=True)
        assert h.plugin.seen == ["override-get"]  # type: ignore[attr-defined]


def test_keyvalue_limits_from_config_zero_means_default() -> None:
    assert KeyValueLimits.from_config() == KeyValueLimits()
    assert KeyValueLimits.from_config(max_value_bytes=10).max_value_bytes == 10


class Statements(BackendPlugin):
    """``execute`` twice: without and with the ``batch`` feature."""

    name = "statements"
    config_required = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    @operation("execute", params=ExecuteStatementRequest, result=ExecuteStatementResponse)
    async def execute(
        self, params: ExecuteStatementRequest, ctx: OperationContext
    ) -> ExecuteStatementResponse:
        self.seen.append(len(params.batch))
        return ExecuteStatementResponse()

    @operation(
        "execute_batched",
        params=ExecuteStatementRequest,
        result=ExecuteStatementResponse,
        features=("batch",),
    )
    async def execute_batched(
        self, params: ExecuteStatementRequest, ctx: OperationContext
    ) -> ExecuteStatementResponse:
        self.seen.append(len(params.batch))
        return ExecuteStatementResponse()


async def test_keyvalue_execute_batch_needs_the_batch_feature() -> None:
    plugin = Statements()
    rows = [Row(values=[Value(int64_value=1)]), Row(values=[Value(int64_value=2)])]
    async with PluginHarness(lambda: plugin) as h:
        with pytest.raises(Unimplemented, match="'batch' feature"):
            await h.execute("execute", ExecuteStatementRequest(sql="INSERT", batch=rows))
        await h.execute("execute", ExecuteStatementRequest(sql="INSERT"))
        await h.execute("execute_batched", ExecuteStatementRequest(sql="INSERT", batch=rows))
        with pytest.raises(InvalidArgument, match="params must be empty"):
            await h.execute(
                "execute_batched",
                ExecuteStatementRequest(sql="INSERT", params=[Value(int64_value=0)], batch=rows),
            )
        too_many = [Row()] * 1001
        with pytest.raises(InvalidArgument, match="1001 batch rows"):
            await h.execute("execute_batched", ExecuteStatementRequest(sql="I", batch=too_many))
    assert plugin.seen == [0, 2]  # the refused requests never reached a handler
