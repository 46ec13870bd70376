"""The connection pool (prism_plugin_postgres.pool): callers beyond its size wait their turn,
and a caller cancelled before or while waiting takes no connection with it."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from backends import PostgresServer
from postgres_testkit import config_for
from prism_plugin_postgres import PostgresPlugin

from prism._proto.prism.data.v1 import GetRequest, QueryRequest, SetRequest
from prism.sdk.testing import PluginHarness

LOCK = 0x7072_6973_6D01  # an advisory lock key of this test's own


async def test_pool_a_caller_cancelled_while_waiting_takes_no_connection(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    """One connection, held by a query waiting for a lock the test holds; a second caller waits
    for the connection and is cancelled; once the lock is released the first finishes and a
    third caller gets the connection (a slot the cancelled one had kept would hang it)."""
    config = config_for(postgres, pool_size=1)
    admin: Any = await trio.to_thread.run_sync(postgres.client)
    try:
        await trio.to_thread.run_sync(admin.execute, f"SELECT pg_advisory_lock({LOCK})")
        async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
            await h.execute("set", SetRequest(key="k", value=b"v"))
            held: list[Any] = []
            waiter = trio.CancelScope()
            waited: list[Any] = []

            async def hold() -> None:
                sql = f"SELECT 1 AS one FROM (SELECT pg_advisory_xact_lock({LOCK})) AS locked"
                held.append(await h.execute("query", QueryRequest(sql=sql)))

            async def wait_for_the_connection() -> None:
                with waiter:
                    waited.append(await h.execute("get", GetRequest(key="k")))

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(hold)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(wait_for_the_connection)
                    await trio.testing.wait_all_tasks_blocked()
                    waiter.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.to_thread.run_sync(
                        admin.execute, f"SELECT pg_advisory_unlock({LOCK})"
                    )
                got = await h.execute("get", GetRequest(key="k"))
            assert waiter.cancelled_caught
            assert waited == []
            assert len(held) == 1
            assert got.value == b"v"  # type: ignore[union-attr]
    finally:
        await trio.to_thread.run_sync(admin.close)


async def test_pool_callers_beyond_its_size_share_its_connections(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    calls = 8
    config = config_for(postgres, pool_size=2)
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        before = await trio.to_thread.run_sync(postgres.connections, config["application_name"])
        values: list[bytes] = []

        async def get() -> None:
            values.append((await h.execute("get", GetRequest(key="k"))).value)  # type: ignore[union-attr]

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(calls):
                    nursery.start_soon(get)
        after = await trio.to_thread.run_sync(postgres.connections, config["application_name"])
        assert values == [b"v"] * calls
        assert len(after) == len(before)


async def test_pool_a_call_cancelled_before_it_starts_leaves_the_pool_whole(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    config["pool_size"] = 1
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        with trio.CancelScope() as scope:
            scope.cancel()
            await h.execute("get", GetRequest(key="k"))
        assert scope.cancelled_caught
        with trio.fail_after(30):
            got = await h.execute("get", GetRequest(key="k"))
        assert got.value == b"v"  # type: ignore[union-attr]
