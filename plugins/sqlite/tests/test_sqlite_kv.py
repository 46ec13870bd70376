"""The sqlite plugin through the SDK harness: operations, TTLs, durability, errors."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from prism_plugin_sqlite import SqliteConfig, SqlitePlugin
from prism_plugin_sqlite.db import prefix_successor

from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    SetRequest,
)
from prism.sdk import FailedPrecondition, InvalidArgument, Status, Unavailable
from prism.sdk.testing import PluginHarness


class FakeClock:
    """Wall-clock seconds the test moves by hand (TTLs are wall-clock: they survive restarts)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(tmp_path: Path) -> SqliteConfig:
    return SqliteConfig(path=str(tmp_path / "kv.db"))


def plugin_with(clock: FakeClock) -> Callable[[], SqlitePlugin]:
    return lambda: SqlitePlugin(clock=clock)


async def get(h: PluginHarness, key: str) -> GetResponse:
    result = await h.execute("get", GetRequest(key=key))
    assert isinstance(result, GetResponse)
    return result


async def test_sqlite_set_get_delete_exists(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        assert not (await get(h, "a")).found
        await h.execute("set", SetRequest(key="a", value=b"\x00\x01binary"))
        got = await get(h, "a")
        assert (got.found, got.value) == (True, b"\x00\x01binary")
        await h.execute("set", SetRequest(key="a", value=b"2"))
        assert (await get(h, "a")).value == b"2"
        assert await h.execute("exists", ExistsRequest(key="a")) == ExistsResponse(exists=True)
        assert await h.execute("delete", DeleteRequest(key="a")) == DeleteResponse(deleted=True)
        assert await h.execute("delete", DeleteRequest(key="a")) == DeleteResponse(deleted=False)
        assert await h.execute("exists", ExistsRequest(key="a")) == ExistsResponse(exists=False)


async def test_sqlite_list_keys_by_prefix_in_order_with_pages(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        for key in ["user:3", "user:1", "order:1", "user:2", "users", "user;"]:
            await h.execute("set", SetRequest(key=key, value=b"x"))
        page = await h.execute("list_keys", ListKeysRequest(prefix="user:", limit=2))
        assert page == ListKeysResponse(keys=["user:1", "user:2"], truncated=True)
        page = await h.execute(
            "list_keys", ListKeysRequest(prefix="user:", limit=2, start_after="user:2")
        )
        assert page == ListKeysResponse(keys=["user:3"], truncated=False)
        everything = await h.execute("list_keys", ListKeysRequest())
        assert isinstance(everything, ListKeysResponse)
        assert everything.keys == ["order:1", "user:1", "user:2", "user:3", "user;", "users"]


def test_sqlite_prefix_successor_bounds_exactly_the_prefixed_keys() -> None:
    assert prefix_successor("") is None
    assert prefix_successor("ab") == "ac"
    assert prefix_successor("a\U0010ffff") == "b"
    assert prefix_successor("\U0010ffff") is None
    assert prefix_successor("a\ud7ff") == "a\ue000"


async def test_sqlite_ttl_expiry_is_immediate(config: SqliteConfig) -> None:
    clock = FakeClock()
    async with PluginHarness(plugin_with(clock), config=config) as h:
        await h.execute("set", SetRequest(key="a", value=b"1", ttl_ms=1500))
        await h.execute("set", SetRequest(key="forever", value=b"1"))
        clock.now += 1.4
        assert (await get(h, "a")).found
        clock.now += 0.2
        assert not (await get(h, "a")).found
        assert await h.execute("exists", ExistsRequest(key="a")) == ExistsResponse(exists=False)
        assert await h.execute("list_keys", ListKeysRequest()) == ListKeysResponse(keys=["forever"])
        assert await h.execute("delete", DeleteRequest(key="a")) == DeleteResponse(deleted=False)


async def test_sqlite_sweeper_deletes_expired_rows(config: SqliteConfig) -> None:
    clock = FakeClock()
    config.sweep_interval_ms = 10  # real time: the sweep runs in a worker thread

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(config.path)) as db:
            (count,) = db.execute("SELECT count(*) FROM prism_kv").fetchone()
            return int(count)

    async with PluginHarness(plugin_with(clock), config=config) as h:
        await h.execute("set", SetRequest(key="a", value=b"1", ttl_ms=10))
        await h.execute("set", SetRequest(key="b", value=b"1"))
        assert rows() == 2
        clock.now += 1
        for _ in range(500):  # no reads in between: only the sweeper can delete
            if rows() == 1:
                break
            await trio.sleep(0.01)
        assert rows() == 1


async def test_sqlite_data_and_ttls_survive_a_restart(config: SqliteConfig) -> None:
    clock = FakeClock()
    async with PluginHarness(plugin_with(clock), config=config) as h:
        await h.execute("set", SetRequest(key="kept", value=b"durable"))
        await h.execute("set", SetRequest(key="short", value=b"1", ttl_ms=1000))
        await h.execute("set", SetRequest(key="long", value=b"1", ttl_ms=60_000))
        assert (await h.shutdown()).success
    clock.now += 2
    async with PluginHarness(plugin_with(clock), config=config) as h:
        kept = await get(h, "kept")
        assert (kept.found, kept.value) == (True, b"durable")
        assert not (await get(h, "short")).found
        assert (await get(h, "long")).found


@pytest.mark.parametrize("config", [SqliteConfig(), None, {}])
async def test_sqlite_path_is_required_naming_the_field(config: SqliteConfig | None) -> None:
    with pytest.raises(InvalidArgument, match=r"config\.path: required \(the database file\)$"):
        async with PluginHarness(SqlitePlugin, config=config):
            pass


async def test_sqlite_negative_settings_name_the_field(tmp_path: Path) -> None:
    config = SqliteConfig(path=str(tmp_path / "kv.db"), busy_timeout_ms=-1)
    with pytest.raises(InvalidArgument, match=r"config\.busy_timeout_ms: must not be negative$"):
        async with PluginHarness(SqlitePlugin, config=config):
            pass


async def test_sqlite_creates_missing_parent_directories_private(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(mode=0o755)
    path = tmp_path / "data" / "new" / "deeper" / "kv.db"
    async with PluginHarness(SqlitePlugin, config=SqliteConfig(path=str(path))) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
    assert path.is_file()
    for created in (tmp_path / "data" / "new", tmp_path / "data" / "new" / "deeper"):
        assert stat.S_IMODE(created.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755  # existing: untouched


@pytest.mark.parametrize("typed", [False, True])
async def test_sqlite_relative_path_is_relative_to_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, typed: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    etc = tmp_path / "etc"
    config = {"path": "data/kv.db"}
    async with PluginHarness(SqlitePlugin, config=config, config_dir=etc, typed=typed) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
    assert (etc / "data" / "kv.db").is_file()
    assert not (tmp_path / "data").exists()


async def test_sqlite_relative_path_without_a_config_dir_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with PluginHarness(SqlitePlugin, config={"path": "kv.db"}):
        pass
    assert (tmp_path / "kv.db").is_file()


async def test_sqlite_parent_that_is_a_file_is_failed_precondition(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = SqliteConfig(path=str(tmp_path / "file" / "sub" / "kv.db"))
    with pytest.raises(
        FailedPrecondition, match=r"config\.path: cannot open SQLite database .*not a directory"
    ):
        async with PluginHarness(SqlitePlugin, config=config):
            pass


async def test_sqlite_file_that_is_not_a_database_is_failed_precondition(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(FailedPrecondition, match="cannot open SQLite database"):
        async with PluginHarness(SqlitePlugin, config=SqliteConfig(path=str(path))):
            pass


@pytest.mark.parametrize(
    ("operation", "params", "message"),
    [
        ("get", GetRequest(key=""), "key must not be empty"),
        ("set", SetRequest(key="a", ttl_ms=-5), "ttl_ms must not be negative"),
        ("list_keys", ListKeysRequest(limit=-1), "limit must not be negative"),
    ],
)
async def test_sqlite_invalid_requests_are_invalid_argument(
    config: SqliteConfig, operation: str, params: GetRequest, message: str
) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        with pytest.raises(InvalidArgument, match=message):
            await h.execute(operation, params)


async def test_sqlite_locked_database_is_unavailable(config: SqliteConfig) -> None:
    config.busy_timeout_ms = 50
    async with PluginHarness(SqlitePlugin, config=config) as h:
        other = sqlite3.connect(config.path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            with pytest.raises(Unavailable, match="locked"):
                await h.execute("set", SetRequest(key="a", value=b"1"))
            assert (await get(h, "missing")).found is False  # WAL: reads still work
        finally:
            other.close()
        await h.execute("set", SetRequest(key="a", value=b"1"))


async def test_sqlite_health_and_connection_gauge(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        assert (await h.health()).status == 0  # HEALTHY
        assert h.metrics().connections_active == 1
        await h.shutdown()
        assert h.metrics().connections_active == 0


async def test_sqlite_operations_after_shutdown_are_unavailable(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config) as h:
        await h.shutdown()
        with pytest.raises(Unavailable) as info:
            await get(h, "a")
        assert info.value.status == Status.UNAVAILABLE


async def test_sqlite_typed_path(config: SqliteConfig) -> None:
    async with PluginHarness(SqlitePlugin, config=config, typed=True) as h:
        await h.execute("set", SetRequest(key="a", value=b"1"))
        assert (await get(h, "a")).value == b"1"


def test_sqlite_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="prism.plugins", name="sqlite")
    assert entry.load() is SqlitePlugin
