"""prism.etcd.client against a real etcd."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from etcd_server import EtcdServer, free_port

from prism.etcd import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    Put,
    WatchCompacted,
    prefix_end,
)

_names = itertools.count()


@pytest.fixture
def key() -> str:
    """A key no other test uses (the etcd server is shared by the module)."""
    return f"/test/{next(_names)}/"


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd.endpoint) as c:
        yield c


async def _drain(client: EtcdClient, key: str, start: int) -> None:
    async with client.watch(key, start_revision=start) as batches:
        async for _ in batches:
            pass


def test_prefix_end_covers_the_prefix() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


async def test_client_put_then_range_reads_bytes_back(client: EtcdClient, key: str) -> None:
    value = b"\x00binary\xffvalue"
    revision = await client.put(key + "k", value)
    result = await client.range(key + "k")
    assert result.revision == revision
    (kv,) = result.kvs
    assert (kv.key, kv.value, kv.mod_revision, kv.version) == (
        (key + "k").encode(),
        value,
        revision,
        1,
    )
    assert (await client.range(key + "missing")).kvs == ()


async def test_client_range_prefix_lists_keys_under_it(client: EtcdClient, key: str) -> None:
    for name in ("a", "b", "c"):
        await client.put(key + name, name)
    await client.put(key[:-1] + "x", "outside")
    result = await client.range(key, prefix=True)
    assert [kv.value for kv in result.kvs] == [b"a", b"b", b"c"]
    assert await client.delete(key, prefix=True) == 3
    assert (await client.range(key, prefix=True)).kvs == ()


async def test_client_range_at_an_old_revision(client: EtcdClient, key: str) -> None:
    first = await client.put(key, "one")
    await client.put(key, "two")
    (kv,) = (await client.range(key, revision=first)).kvs
    assert kv.value == b"one"


async def test_client_txn_compare_on_mod_revision(client: EtcdClient, key: str) -> None:
    created = await client.txn([Compare(key, 0)], [Put(key, "v1")], [key])
    assert created.succeeded
    # A second writer that read "does not exist" loses, and is told what is there now.
    lost = await client.txn([Compare(key, 0)], [Put(key, "v2")], [key])
    assert not lost.succeeded
    assert [kv.value for kv in lost.kvs] == [b"v1"]
    won = await client.txn([Compare(key, created.revision)], [Put(key, "v3")], [key])
    assert won.succeeded
    assert (await client.range(key)).kvs[0].value == b"v3"


async def test_client_watch_yields_changes_in_order(client: EtcdClient, key: str) -> None:
    start = (await client.range(key)).revision + 1
    seen: list[tuple[str, bytes, int]] = []
    with trio.fail_after(30):
        async with client.watch(key, start_revision=start) as batches:
            r1 = await client.put(key, "1")
            await client.put(key, "2")
            await client.delete(key)
            async for batch in batches:
                seen += [(e.type, e.kv.value, e.kv.mod_revision) for e in batch.events]
                if len(seen) == 3:
                    break
    assert seen == [("put", b"1", r1), ("put", b"2", r1 + 1), ("delete", b"", r1 + 2)]


async def test_client_watch_replays_from_an_old_revision(client: EtcdClient, key: str) -> None:
    first = await client.put(key, "a")
    await client.put(key, "b")
    with trio.fail_after(30):
        async with client.watch(key, start_revision=first + 1) as batches:
            batch = await anext(aiter(batches))
    assert [e.kv.value for e in batch.events] == [b"b"]


async def test_client_watch_prefix(client: EtcdClient, key: str) -> None:
    start = (await client.range(key)).revision + 1
    with trio.fail_after(30):
        async with client.watch(key, start_revision=start, prefix=True) as batches:
            await client.put(key[:-1] + "-not-under", "x")
            await client.put(key + "m1", "y")
            batch = await anext(aiter(batches))
    assert [e.kv.key for e in batch.events] == [(key + "m1").encode()]


async def test_client_watch_compacted_revision(client: EtcdClient, key: str) -> None:
    first = await client.put(key, "a")
    latest = await client.put(key, "b")
    async with httpx.AsyncClient() as http:  # etcd's own compaction API, as an operator's
        answer = await http.post(
            f"{client.endpoint}/v3/kv/compaction", json={"revision": str(latest)}
        )
        assert answer.status_code == 200
    with trio.fail_after(30), pytest.raises(WatchCompacted) as caught:
        await _drain(client, key, first)
    assert caught.value.compact_revision == latest


async def test_client_lease_keys_vanish_when_revoked(client: EtcdClient, key: str) -> None:
    lease = await client.lease_grant(30)
    assert await client.lease_keepalive(lease) == 30
    await client.put(key, "member", lease=lease)
    assert (await client.range(key)).kvs[0].lease == lease
    await client.lease_revoke(lease)
    assert (await client.range(key)).kvs == ()
    with pytest.raises(LeaseNotFound):
        await client.lease_keepalive(lease)
    with pytest.raises(LeaseNotFound):
        await client.lease_revoke(lease)


async def test_client_put_on_a_dead_lease_fails(client: EtcdClient, key: str) -> None:
    lease = await client.lease_grant(30)
    await client.lease_revoke(lease)
    with pytest.raises(LeaseNotFound, match=f"put {key}"):
        await client.put(key, "x", lease=lease)


async def test_client_unreachable_etcd_says_which_call_and_where() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient(endpoint) as c:
        with pytest.raises(EtcdUnavailable) as caught:
            await c.range("/prism/config")
    message = str(caught.value)
    assert message.startswith(f"etcd range /prism/config at {endpoint}: ")


async def test_client_error_never_holds_the_value(client: EtcdClient, key: str) -> None:
    lease = await client.lease_grant(30)
    await client.lease_revoke(lease)
    with pytest.raises(EtcdError) as caught:
        await client.put(key, "password: hunter2", lease=lease)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr((await client.range(key)).kvs)


async def test_client_watch_breaks_when_etcd_dies(etcd: EtcdServer, key: str) -> None:
    async with EtcdClient(etcd.endpoint) as c:
        start = (await c.range(key)).revision + 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, etcd.kill)
            with trio.fail_after(60), pytest.raises(EtcdUnavailable, match="watch"):
                await _drain(c, key, start)
    etcd.start()  # the module's server, back for the tests after this one
