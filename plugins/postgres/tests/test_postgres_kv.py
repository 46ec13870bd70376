"""The key-value table beyond the acceptance suites: expiry by the server's clock and the sweep,
keys of any text (NUL included), limits from the config (prism_plugin_postgres.kv)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import PostgresServer
from conftest import config_for
from prism_plugin_postgres import PostgresPlugin
from prism_plugin_postgres.kv import prefix_successor

from prism._proto.prism.data.v1 import (
    GetManyRequest,
    GetRequest,
    ListKeysRequest,
    SetRequest,
)
from prism.sdk import InvalidArgument
from prism.sdk.testing import PluginHarness


def test_prefix_successor_is_the_next_byte_string() -> None:
    assert prefix_successor(b"ab") == b"ac"
    assert prefix_successor(b"a\xff") == b"b"
    assert prefix_successor(b"\xff\xff") is None


async def test_kv_expired_rows_are_invisible_then_swept(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, sweep_interval_ms=50)
    table = config["table"]
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        await h.execute("set", SetRequest(key="short", value=b"v", ttl_ms=1))
        await h.execute("set", SetRequest(key="long", value=b"v", ttl_ms=3_600_000))
        got = await h.execute("get", GetRequest(key="long"))
        assert 3_500_000 < got.ttl_remaining_ms <= 3_600_000  # type: ignore[union-attr]

        def rows() -> list[Any]:
            with postgres.client() as admin:
                found: list[Any] = admin.execute(f"SELECT key FROM {table} ORDER BY key").fetchall()
                return found

        with trio.fail_after(30):
            while await trio.to_thread.run_sync(rows) != [(b"long",)]:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert (await h.execute("get", GetRequest(key="short"))).found is False  # type: ignore[union-attr]


async def test_kv_keys_are_exact_bytes_in_code_point_order(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    keys = ["a\x00b", "a", "é", "\U0001f511", "z"]
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        for i, key in enumerate(keys):
            await h.execute("set", SetRequest(key=key, value=str(i).encode()))
        listed = await h.execute("list_keys", ListKeysRequest())
        assert listed.keys == sorted(keys)  # type: ignore[union-attr]
        got = await h.execute("get_many", GetManyRequest(keys=keys))
        assert [item.value for item in got.items] == [str(i).encode() for i in range(5)]  # type: ignore[union-attr]


async def test_kv_limits_come_from_the_config(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, max_key_bytes=8, max_value_bytes=4, max_batch=2)
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        with pytest.raises(InvalidArgument, match="key is longer than the limit of 8 bytes"):
            await h.execute("set", SetRequest(key="k" * 9, value=b"v"))
        with pytest.raises(InvalidArgument, match="over the limit of 4"):
            await h.execute("set", SetRequest(key="k", value=b"12345"))
        with pytest.raises(InvalidArgument, match="over the limit of 2"):
            await h.execute("get_many", GetManyRequest(keys=["a", "b", "c"]))
