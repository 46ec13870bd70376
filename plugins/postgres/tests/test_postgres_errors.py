"""Backend errors as gRPC statuses, against the real server (prism_plugin_postgres.errors)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from backends import PostgresServer
from conftest import config_for
from prism_plugin_postgres import PostgresPlugin
from prism_plugin_postgres.errors import status_for_sqlstate

from prism._proto.prism.data.v1 import (
    ExecuteStatementRequest,
    GetRequest,
    QueryRequest,
    SetRequest,
    Statement,
    TransactionRequest,
    Value,
)
from prism.grpc.wire.status import Status
from prism.sdk import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from prism.sdk.testing import PluginHarness


def harness(config: dict[str, Any], credentials: dict[str, str]) -> PluginHarness:
    return PluginHarness(PostgresPlugin, config=config, credentials=credentials)


async def execute(h: PluginHarness, sql: str, *params: Value) -> Any:
    return await h.execute("execute", ExecuteStatementRequest(sql=sql, params=list(params)))


def test_status_for_sqlstate_follows_the_data_model() -> None:
    assert status_for_sqlstate("23505") == Status.ALREADY_EXISTS
    assert status_for_sqlstate("23503") == Status.FAILED_PRECONDITION
    assert status_for_sqlstate("40001") == Status.ABORTED
    assert status_for_sqlstate("40P01") == Status.ABORTED
    assert status_for_sqlstate("42601") == Status.INVALID_ARGUMENT
    assert status_for_sqlstate("57014") == Status.DEADLINE_EXCEEDED
    assert status_for_sqlstate("57P01") == Status.UNAVAILABLE
    assert status_for_sqlstate("42501") == Status.PERMISSION_DENIED
    assert status_for_sqlstate("99999") == Status.UNKNOWN


async def test_errors_syntax_unknown_table_and_constraints(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    async with harness(config, credentials) as h:
        with pytest.raises(InvalidArgument, match=r"syntax error.*42601"):
            await h.execute("query", QueryRequest(sql="SELEC 1"))
        with pytest.raises(InvalidArgument, match="42P01"):
            await h.execute("query", QueryRequest(sql="SELECT * FROM no_such_table"))
        table = f"t_{config['table']}"
        await execute(h, f"CREATE TABLE {table} (id bigint PRIMARY KEY, n bigint NOT NULL)")
        insert = f"INSERT INTO {table} VALUES ($1, $2)"
        await execute(h, insert, Value(int64_value=1), Value(int64_value=1))
        with pytest.raises(AlreadyExists, match="23505"):
            await execute(h, insert, Value(int64_value=1), Value(int64_value=2))
        with pytest.raises(FailedPrecondition, match="23502"):
            await execute(h, insert, Value(int64_value=2), Value())
        with pytest.raises(InvalidArgument, match=r"08P01|42P18|bind message"):
            await execute(h, insert, Value(int64_value=3))  # a parameter short
        with pytest.raises(InvalidArgument, match="22P02"):
            await execute(h, insert, Value(string_value="x"), Value(int64_value=1))
        # The connection that failed serves the next call as usual.
        assert (await h.execute("get", GetRequest(key="k"))).found is False


async def test_errors_serialization_failure_is_aborted(
    postgres: PostgresServer, config: dict[str, Any], credentials: dict[str, str]
) -> None:
    table = f"t_{config['table']}"
    admin = postgres.client()
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
    admin.execute(f"INSERT INTO {table} VALUES (1, 0)")
    admin.execute(f"GRANT ALL ON {table} TO {postgres.USER}")
    async with harness(config, credentials) as h:
        holder = postgres.client()
        holder.execute("BEGIN")
        holder.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")  # holds the row lock
        statements = [
            Statement(sql="SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
            Statement(sql="SELECT 1"),  # the snapshot is taken here
            Statement(sql=f"UPDATE {table} SET v = 2 WHERE id = 1"),  # waits for the lock
        ]
        async with trio.open_nursery() as nursery:
            failed: list[BaseException] = []

            async def transaction() -> None:
                try:
                    await h.execute("transaction", TransactionRequest(statements=statements))
                except Aborted as exc:
                    failed.append(exc)

            nursery.start_soon(transaction)
            with trio.fail_after(30):
                while not admin.execute(  # noqa: ASYNC110 - the state is in the server
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                    "AND wait_event_type = 'Lock'",
                    (config["application_name"],),
                ).fetchall():
                    await trio.sleep(0.02)
            holder.execute("COMMIT")
        assert failed, "the transaction was not ABORTED"
        assert "statement 2: could not serialize access" in str(failed[0])
        assert "40001" in str(failed[0])
    assert admin.execute(f"SELECT v FROM {table}").fetchall() == [(1,)]
    holder.close()
    admin.close()


async def test_errors_statement_timeout_is_deadline_exceeded(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, statement_timeout_ms=200)
    async with harness(config, credentials) as h:
        with pytest.raises(DeadlineExceeded, match="statement_timeout"):
            await h.execute("query", QueryRequest(sql="SELECT pg_sleep(30)"))
        await h.execute("set", SetRequest(key="after", value=b"fine"))


async def test_errors_the_callers_deadline_cancels_the_query_on_the_server(
    postgres: PostgresServer, config: dict[str, Any], credentials: dict[str, str]
) -> None:
    async with harness(config, credentials) as h:
        with trio.move_on_after(0.5) as scope:
            await h.execute("query", QueryRequest(sql="SELECT pg_sleep(60)"))
        assert scope.cancelled_caught

        def sleeping() -> list[Any]:
            rows: list[Any] = postgres.admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND query LIKE '%%pg_sleep%%' AND state = 'active'",
                (config["application_name"],),
            ).fetchall()
            return rows

        # The cancel request went out before the call returned: nothing sleeps on.
        assert await trio.to_thread.run_sync(sleeping) == []
        # Both pooled connections still serve (none was lost to the cancellation).
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(h.execute, "set", SetRequest(key=f"k{i}", value=b"v"))
        assert h.plugin._pool is not None
        assert h.plugin._pool.open_connections == 2


async def test_errors_wrong_credentials_are_unauthenticated(
    config: dict[str, Any], credentials: dict[str, str]
) -> None:
    wrong = {**credentials, "password": "not-" + credentials["password"]}
    with pytest.raises(Unauthenticated) as info:
        async with harness(config, wrong):
            pass
    assert wrong["password"] not in str(info.value)


async def test_errors_no_server_is_unavailable(credentials: dict[str, str]) -> None:
    from backends import free_port

    config = {"host": "127.0.0.1", "port": free_port(), "database": "prism"}
    with pytest.raises(Unavailable, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1"):
        async with harness(config, credentials):
            pass


async def test_errors_a_server_stopped_mid_test_is_unavailable_and_unhealthy(
    own_postgres: PostgresServer,
) -> None:
    config = config_for(own_postgres)
    async with harness(config, own_postgres.credentials.as_map()) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        assert (await h.health()).status.name == "HEALTHY"
        await trio.to_thread.run_sync(own_postgres.stop)
        with pytest.raises(Unavailable):
            await h.execute("get", GetRequest(key="k"))
        with pytest.raises(Unavailable):
            await h.execute("set", SetRequest(key="k", value=b"w"))
        health = await h.health()
        assert health.status.name == "NOT_SERVING" or health.status.name == "UNHEALTHY"
        assert "unreachable" in health.message
