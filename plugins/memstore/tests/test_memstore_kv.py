"""memstore's key-value operations, through the SDK harness (and so the RFC's messages)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prism_plugin_memstore import MemstoreConfig, MemstorePlugin

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    ExpireRequest,
    ExpireResponse,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    TransactOperation,
    TransactRequest,
    TransactResponse,
)
from prism.sdk import Aborted, InvalidArgument, NotFound, ResourceExhausted, Status
from prism.sdk.testing import PluginHarness


async def get(h: PluginHarness, key: str) -> GetResponse:
    result = await h.execute("get", GetRequest(key=key))
    assert isinstance(result, GetResponse)
    return result


async def test_memstore_set_then_get_returns_value() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        assert (await get(h, "a")).value == b"1"
        assert (await get(h, "a")).found


async def test_memstore_get_missing_key_is_not_found_in_response() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        result = await get(h, "nope")
        assert not result.found
        assert result.value == b""


async def test_memstore_set_overwrites() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        await h.execute("set", SetRequest(key="a", value=b"2"))
        assert (await get(h, "a")).value == b"2"


async def test_memstore_delete_reports_whether_key_existed() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        assert await h.execute("delete", DeleteRequest(key="a")) == DeleteResponse(deleted=True)
        assert await h.execute("delete", DeleteRequest(key="a")) == DeleteResponse(deleted=False)
        assert not (await get(h, "a")).found


async def test_memstore_exists() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b""))
        assert await h.execute("exists", ExistsRequest(key="a")) == ExistsResponse(exists=True)
        assert await h.execute("exists", ExistsRequest(key="b")) == ExistsResponse(exists=False)


async def test_memstore_list_keys_by_prefix_in_order_with_pages() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        for key in ["user:3", "user:1", "order:1", "user:2", "users"]:
            await h.execute("set", SetRequest(key=key, value=b"x"))
        page = await h.execute("list_keys", ListKeysRequest(prefix="user:", limit=2))
        assert page == ListKeysResponse(keys=["user:1", "user:2"], truncated=True)
        page = await h.execute(
            "list_keys", ListKeysRequest(prefix="user:", limit=2, start_after="user:2")
        )
        assert page == ListKeysResponse(keys=["user:3"], truncated=False)
        everything = await h.execute("list_keys", ListKeysRequest())
        assert isinstance(everything, ListKeysResponse)
        assert everything.keys == ["order:1", "user:1", "user:2", "user:3", "users"]


async def test_memstore_ttl_expires_keys_immediately(autojump_clock: trio.abc.Clock) -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1", ttl_ms=1500))
        await trio.sleep(1.4)
        assert (await get(h, "a")).found
        await trio.sleep(0.2)
        assert not (await get(h, "a")).found
        assert await h.execute("exists", ExistsRequest(key="a")) == ExistsResponse(exists=False)
        assert await h.execute("delete", DeleteRequest(key="a")) == DeleteResponse(deleted=False)
        assert await h.execute("list_keys", ListKeysRequest()) == ListKeysResponse()


async def test_memstore_default_ttl_applies_when_set_gives_none(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(default_ttl_ms=1000)) as h:
        await h.execute("set", SetRequest(key="short", value=b"1"))
        await h.execute("set", SetRequest(key="long", value=b"1", ttl_ms=5000))
        await trio.sleep(2)
        assert not (await get(h, "short")).found
        assert (await get(h, "long")).found


async def test_memstore_sweeper_frees_expired_keys(autojump_clock: trio.abc.Clock) -> None:
    config = MemstoreConfig(sweep_interval_ms=100)
    async with PluginHarness(MemstorePlugin, config=config) as h:
        for i in range(10):
            await h.execute("set", SetRequest(key=f"k{i}", value=b"x", ttl_ms=50))
        await h.execute("set", SetRequest(key="keep", value=b"x"))
        assert (await h.health()).details["keys"] == "11"
        await trio.sleep(0.2)  # no reads: only the sweeper can have removed them
        assert (await h.health()).details["keys"] == "1"


async def test_memstore_full_store_refuses_new_keys_but_allows_overwrites() -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(max_keys=2)) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        await h.execute("set", SetRequest(key="b", value=b"1"))
        with pytest.raises(ResourceExhausted, match="full"):
            await h.execute("set", SetRequest(key="c", value=b"1"))
        await h.execute("set", SetRequest(key="a", value=b"2"))
        await h.execute("delete", DeleteRequest(key="b"))
        await h.execute("set", SetRequest(key="c", value=b"1"))


async def test_memstore_expired_keys_do_not_count_against_max_keys(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(max_keys=1)) as h:
        await h.execute("set", SetRequest(key="a", value=b"1", ttl_ms=10))
        await trio.sleep(0.02)
        await h.execute("set", SetRequest(key="b", value=b"1"))


@pytest.mark.parametrize(
    ("operation", "params", "message"),
    [
        ("get", GetRequest(key=""), "key must not be empty"),
        ("set", SetRequest(key="", value=b"1"), "key must not be empty"),
        ("set", SetRequest(key="a", ttl_ms=-1), "ttl_ms must not be negative"),
        ("list_keys", ListKeysRequest(limit=-1), "limit must not be negative"),
        ("delete", DeleteRequest(), "key must not be empty"),
    ],
)
async def test_memstore_invalid_requests_are_invalid_argument(
    operation: str, params: GetRequest, message: str
) -> None:
    async with PluginHarness(MemstorePlugin) as h:
        with pytest.raises(InvalidArgument, match=message):
            await h.execute(operation, params)


async def test_memstore_negative_config_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="max_keys"):
        async with PluginHarness(MemstorePlugin, config=MemstoreConfig(max_keys=-1)):
            pass


async def test_memstore_raw_set_and_get_use_metadata_key() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        blob = bytes(range(256))
        assert await h.execute("set_raw", blob, metadata={"key": "blob"}) == b""
        assert await h.execute("get_raw", b"", metadata={"key": "blob"}) == blob
        assert (await get(h, "blob")).value == blob
        with pytest.raises(NotFound, match="'other'"):
            await h.execute("get_raw", b"", metadata={"key": "other"})
        with pytest.raises(InvalidArgument, match="metadata 'key' is required"):
            await h.execute("get_raw", b"")


async def test_memstore_raw_set_honours_ttl_metadata(autojump_clock: trio.abc.Clock) -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set_raw", b"v", metadata={"key": "k", "ttl_ms": "100"})
        await trio.sleep(0.2)
        assert not (await get(h, "k")).found
        with pytest.raises(InvalidArgument, match="ttl_ms"):
            await h.execute("set_raw", b"v", metadata={"key": "k", "ttl_ms": "soon"})


async def test_memstore_typed_op_rejects_raw_bytes_and_vice_versa() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        with pytest.raises(InvalidArgument, match=r"prism\.data\.v1\.GetRequest, got raw bytes"):
            await h.execute("get", b"a")
        with pytest.raises(InvalidArgument, match=r"raw bytes.*got .*prism\.data\.v1\.GetRequest"):
            await h.execute("get_raw", GetRequest(key="a"), metadata={"key": "a"})
        with pytest.raises(InvalidArgument) as info:
            await h.execute("get", SetRequest(key="a"))
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "expected prism.data.v1.GetRequest" in info.value.message
        assert "prism.data.v1.SetRequest" in info.value.message


async def test_memstore_get_records_cache_hits_and_misses() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        h.metrics()  # start a fresh interval
        await get(h, "a")
        await get(h, "a")
        await get(h, "b")
        metrics = h.metrics()
        assert (metrics.cache_hits, metrics.cache_misses) == (2, 1)
        assert metrics.requests_total == 3
        assert (h.metrics().cache_hits, h.metrics().cache_misses) == (0, 0)


async def test_memstore_typed_path_gives_the_same_results() -> None:
    async with PluginHarness(MemstorePlugin, typed=True) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        assert (await get(h, "a")).value == b"1"
        assert await h.execute("set_raw", b"2", metadata={"key": "a"}) == b""
        assert await h.execute("get_raw", b"", metadata={"key": "a"}) == b"2"


async def test_memstore_health_reports_key_count() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        health = await h.health()
        assert health.status == 0  # HEALTHY
        assert health.details == {"keys": "1", "subscribers": "0", "topics": "0", "consumers": "0"}


def test_memstore_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="prism.plugins", name="memstore")
    assert entry.load() is MemstorePlugin


@pytest.mark.parametrize("typed", [False, True])
async def test_memstore_config_from_the_proxys_yaml_mapping(typed: bool) -> None:
    config = {"max_keys": 1, "default_ttl_ms": 60000}
    async with PluginHarness(MemstorePlugin, config=config, typed=typed) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        with pytest.raises(ResourceExhausted):
            await h.execute("set", SetRequest(key="b", value=b"1"))
    with pytest.raises(InvalidArgument, match=r"config\.max_key: unknown field"):
        async with PluginHarness(MemstorePlugin, config={"max_key": 1}, typed=typed):
            pass


# -- etags, bulk, transactions, expire (the contracts; tests/acceptance runs the full suites) ----


async def test_memstore_etag_changes_on_every_write_and_guards_conditional_writes() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        first = await h.execute("set", SetRequest(key="a", value=b"1"))
        assert isinstance(first, SetResponse)
        again = await h.execute("set", SetRequest(key="a", value=b"1"))
        assert isinstance(again, SetResponse)
        assert first.etag
        assert again.etag
        assert first.etag != again.etag
        assert (await get(h, "a")).etag == again.etag
        with pytest.raises(Aborted, match="etag mismatch"):
            await h.execute("set", SetRequest(key="a", value=b"2", if_match=first.etag))
        with pytest.raises(Aborted, match="exists"):
            await h.execute("set", SetRequest(key="a", value=b"2", if_absent=True))
        with pytest.raises(Aborted, match="etag mismatch"):
            await h.execute("delete", DeleteRequest(key="a", if_match=first.etag))
        assert (await get(h, "a")).value == b"1"
        await h.execute("delete", DeleteRequest(key="a", if_match=again.etag))
        assert not (await get(h, "a")).found


async def test_memstore_etags_of_a_new_instance_do_not_match_old_ones() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        old = await h.execute("set", SetRequest(key="a", value=b"1"))
    async with PluginHarness(MemstorePlugin) as h:
        new = await h.execute("set", SetRequest(key="a", value=b"1"))
    assert isinstance(old, SetResponse)
    assert isinstance(new, SetResponse)
    assert old.etag != new.etag


async def test_memstore_remaining_ttl_and_expire(autojump_clock: trio.abc.Clock) -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1", ttl_ms=10_000))
        await trio.sleep(4)
        assert (await get(h, "a")).ttl_remaining_ms == 6000
        assert await h.execute("expire", ExpireRequest(key="a", persist=True)) == ExpireResponse(
            found=True
        )
        assert (await get(h, "a")).ttl_remaining_ms is None
        await h.execute("expire", ExpireRequest(key="a", ttl_ms=500))
        await trio.sleep(0.5)
        assert not (await get(h, "a")).found
        assert await h.execute("expire", ExpireRequest(key="a", ttl_ms=5)) == ExpireResponse()


async def test_memstore_transaction_is_all_or_nothing_even_for_the_key_limit() -> None:
    async with PluginHarness(MemstorePlugin, config=MemstoreConfig(max_keys=2)) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        too_many = TransactRequest(
            operations=[
                TransactOperation(set=SetRequest(key="a", value=b"2")),
                TransactOperation(set=SetRequest(key="b", value=b"2")),
                TransactOperation(set=SetRequest(key="c", value=b"2")),
            ]
        )
        with pytest.raises(ResourceExhausted, match="full"):
            await h.execute("transact", too_many)
        assert (await get(h, "a")).value == b"1"
        assert not (await get(h, "b")).found
        # A delete earlier in the transaction makes room for a later set.
        fits = TransactRequest(
            operations=[
                TransactOperation(delete=DeleteRequest(key="a")),
                TransactOperation(set=SetRequest(key="b", value=b"2")),
                TransactOperation(set=SetRequest(key="c", value=b"2", if_absent=True)),
            ]
        )
        result = await h.execute("transact", fits)
        assert isinstance(result, TransactResponse)
        assert [r.deleted for r in result.results] == [True, False, False]
        assert not (await get(h, "a")).found


async def test_memstore_bulk_items_fail_alone() -> None:
    async with PluginHarness(MemstorePlugin) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        result = await h.execute(
            "set_many",
            SetManyRequest(
                items=[
                    SetRequest(key="a", value=b"2", if_absent=True),
                    SetRequest(key="b", value=b"2"),
                ]
            ),
        )
        assert isinstance(result, SetManyResponse)
        assert [r.code for r in result.results] == [Status.ABORTED, 0]
        got = await h.execute("get_many", GetManyRequest(keys=["a", "b", "zz"]))
        assert isinstance(got, GetManyResponse)
        assert [(i.found, i.value) for i in got.items] == [(True, b"1"), (True, b"2"), (False, b"")]


async def test_memstore_limits_come_from_config() -> None:
    config = MemstoreConfig(max_key_bytes=4, max_value_bytes=2)
    async with PluginHarness(MemstorePlugin, config=config) as h:
        with pytest.raises(InvalidArgument, match="limit of 4 bytes"):
            await h.execute("set", SetRequest(key="kkkkk", value=b"1"))
        with pytest.raises(InvalidArgument, match="over the limit of 2"):
            await h.execute("set_raw", b"123", metadata={"key": "k"})
        with pytest.raises(InvalidArgument, match="limit of 4 bytes"):
            await h.execute("get_raw", metadata={"key": "kkkkk"})
