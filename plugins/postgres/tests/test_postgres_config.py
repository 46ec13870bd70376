"""Initialize: config errors name their field; tables are created, or must exist."""

from __future__ import annotations

from typing import Any

import pytest
from backends import PostgresServer
from conftest import config_for
from prism_plugin_postgres import PostgresPlugin
from prism_plugin_postgres.kv import Table

from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism.sdk import FailedPrecondition, InvalidArgument
from prism.sdk.testing import PluginHarness


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"host": ""}, r"config\.host: required"),
        ({"database": ""}, r"config\.database: required"),
        ({"table": "bad-name"}, r"config\.table: must be an identifier"),
        ({"table": 'x"; DROP TABLE y; --'}, r"config\.table: must be an identifier"),
        ({"table": "a" * 57}, r"config\.table: a table name is at most 56 bytes"),
        ({"pool_size": -1}, r"config\.pool_size: must not be negative"),
        ({"tls_mode": "sometimes"}, r"config\.tls_mode: must be one of"),
        ({"tls_mode": "verify-full"}, r"config\.tls_ca_file: required"),
        ({"max_key_bytes": -1}, "max_key_bytes"),
    ],
)
async def test_config_errors_name_the_field(
    config: dict[str, Any], credentials: dict[str, str], change: dict[str, Any], error: str
) -> None:
    with pytest.raises(InvalidArgument, match=error):
        async with PluginHarness(
            PostgresPlugin, config={**config, **change}, credentials=credentials
        ):
            pass


async def test_config_existing_tables_are_required_without_create_table(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    config = config_for(postgres, create_table=False)
    with pytest.raises(FailedPrecondition, match=r"does not exist: create it"):
        async with PluginHarness(PostgresPlugin, config=config, credentials=credentials):
            pass
    with postgres.client(postgres.credentials) as own:
        for ddl in Table("", config["table"]).ddl():
            own.execute(ddl)
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        assert (await h.execute("get", GetRequest(key="k"))).value == b"v"  # type: ignore[union-attr]


async def test_config_a_schema_qualified_table(
    postgres: PostgresServer, credentials: dict[str, str]
) -> None:
    with postgres.client(postgres.credentials) as own:
        own.execute("CREATE SCHEMA IF NOT EXISTS kvschema")
    config = config_for(postgres)
    config["table"] = f"kvschema.{config['table']}"
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        await h.execute("set", SetRequest(key="k", value=b"in a schema"))
    with postgres.client() as admin:
        name = config["table"]
        assert admin.execute(f"SELECT value FROM {name}").fetchall() == [(b"in a schema",)]
