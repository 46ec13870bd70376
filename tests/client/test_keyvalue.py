"""``prism.client.KeyValue`` against a real proxy: every helper on memstore (``kv``) and SQLite
(``db``), their error statuses, and TTLs on Trio's clock (memstore)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import prism.client as pc
from prism.client import DeleteItem, SetItem

NAMESPACES = pytest.mark.parametrize("ns", ["kv", "db"])


@NAMESPACES
async def test_keyvalue_set_get_exists_delete(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    assert await kv.get("missing") == pc.GetResult("missing", found=False)
    etag = await kv.set("greeting", b"hello")
    assert etag
    got = await kv.get("greeting")
    assert (got.key, got.found, got.value, got.etag, got.ttl) == (
        "greeting",
        True,
        b"hello",
        etag,
        None,
    )
    assert await kv.exists("greeting")
    assert await kv.delete("greeting") is True
    assert await kv.delete("greeting") is False
    assert not await kv.exists("greeting")


@NAMESPACES
async def test_keyvalue_if_match_conflict_is_aborted(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    first = await kv.set("k", b"1")
    second = await kv.set("k", b"2", if_match=first)
    assert second != first
    with pytest.raises(pc.Aborted):
        await kv.set("k", b"3", if_match=first)  # someone changed it since
    with pytest.raises(pc.Aborted):
        await kv.delete("k", if_match=first)
    assert (await kv.get("k")).value == b"2"
    assert await kv.delete("k", if_match=second)


@NAMESPACES
async def test_keyvalue_if_absent_first_write_wins(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    await kv.set("lock", b"me", if_absent=True)
    with pytest.raises(pc.Aborted):
        await kv.set("lock", b"you", if_absent=True)
    assert (await kv.get("lock")).value == b"me"


@NAMESPACES
async def test_keyvalue_bad_requests_are_invalid_argument(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    with pytest.raises(pc.InvalidArgument):
        await kv.set("", b"x")
    with pytest.raises(pc.InvalidArgument):
        await kv.set("k", b"x", if_match="1", if_absent=True)
    with pytest.raises(ValueError, match="positive"):
        await kv.set("k", b"x", ttl=0)
    with pytest.raises(ValueError, match="positive"):
        await kv.expire("k", -1)


@NAMESPACES
async def test_keyvalue_ttl_expire_and_persist(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    await kv.set("session", b"s", ttl=600)
    ttl = (await kv.get("session")).ttl
    assert ttl is not None
    assert 0 < ttl <= 600
    assert await kv.expire("session", 3600)
    ttl = (await kv.get("session")).ttl
    assert ttl is not None
    assert 600 < ttl <= 3600
    assert await kv.persist("session")
    assert (await kv.get("session")).ttl is None
    assert not await kv.expire("nobody", 10)
    assert not await kv.persist("nobody")


async def test_keyvalue_ttl_expires_on_the_clock(
    memory_client: pc.Client, autojump_clock: trio.testing.MockClock
) -> None:
    kv = memory_client.keyvalue("kv")  # memstore keeps time with trio.current_time()
    etag = await kv.set("short", b"lived", ttl=0.5)
    await kv.set("long", b"lived", ttl=60)
    assert (await kv.get("short")).etag == etag
    await trio.sleep(1)
    assert not (await kv.get("short")).found
    assert (await kv.get("long")).found
    assert await kv.expire("long", 0.25)
    await trio.sleep(1)
    assert not await kv.exists("long")


@NAMESPACES
async def test_keyvalue_bulk_in_request_order(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    written = await kv.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert [(r.key, r.ok, r.error) for r in written] == [
        ("a", True, None),
        ("b", True, None),
        ("c", True, None),
    ]
    got = await kv.get_many(["c", "missing", "a"])
    assert [(g.key, g.found, g.value) for g in got] == [
        ("c", True, b"3"),
        ("missing", False, b""),
        ("a", True, b"1"),
    ]
    assert got[0].etag == written[2].etag

    # A failed condition fails only its own item.
    mixed = await kv.set_many([SetItem("a", b"x", if_absent=True), SetItem("d", b"4", ttl=60)])
    assert [r.status for r in mixed] == [pc.Status.ABORTED, pc.Status.OK]
    assert isinstance(mixed[0].error, pc.Aborted)
    assert (await kv.get("d")).ttl is not None

    deleted = await kv.delete_many(["a", DeleteItem("b", if_match="stale"), "nobody"])
    assert [(r.key, r.status, r.deleted) for r in deleted] == [
        ("a", pc.Status.OK, True),
        ("b", pc.Status.ABORTED, False),
        ("nobody", pc.Status.OK, False),
    ]


@NAMESPACES
async def test_keyvalue_transact_all_or_nothing(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    etag = await kv.set("balance", b"10")
    results = await kv.transact(
        [SetItem("balance", b"5", if_match=etag), SetItem("log", b"-5"), DeleteItem("tmp")]
    )
    assert [r.key for r in results] == ["balance", "log", "tmp"]
    assert all(r.ok for r in results)
    assert (await kv.get("balance")).etag == results[0].etag

    with pytest.raises(pc.Aborted, match="1"):  # names the failed operation's index
        await kv.transact([SetItem("log", b"again"), SetItem("balance", b"0", if_match=etag)])
    assert (await kv.get("log")).value == b"-5"  # nothing was written
    assert (await kv.get("balance")).value == b"5"


@NAMESPACES
async def test_keyvalue_list_keys_pages_in_order(client: pc.Client, ns: str) -> None:
    kv = client.keyvalue(ns)
    names = [f"user:{i:02d}" for i in range(7)]
    await kv.set_many({name: b"" for name in reversed(names)} | {"other": b""})
    pages = [page async for page in kv.list_keys("user:", page_size=3)]
    assert pages == [names[0:3], names[3:6], names[6:7]]
    assert [key async for key in kv.keys("user:")] == names
    assert [p async for p in kv.list_keys("user:", start_after="user:04")] == [names[5:]]
    assert [p async for p in kv.list_keys("nobody:")] == []


async def test_keyvalue_unknown_namespace_is_not_found(client: pc.Client) -> None:
    with pytest.raises(pc.NotFound, match="nope"):
        await client.keyvalue("nope").get("k")


async def test_keyvalue_operation_the_plugin_lacks_is_unimplemented(client: pc.Client) -> None:
    with pytest.raises(pc.Unimplemented):
        await client.keyvalue("probe").get("k")


async def test_keyvalue_with_timeout_is_a_view(client: pc.Client) -> None:
    kv = client.keyvalue("kv").with_timeout(30)
    assert kv.client.timeout == 30
    assert kv.namespace == "kv"
    assert client.timeout is None
    await kv.set("k", b"v")
    assert (await kv.get("k")).value == b"v"
