"""What the clickhouse plugin's tests share beside their fixtures (conftest.py): a module of its
own, because ``from conftest import ...`` finds whichever conftest the whole suite imported
first under that name."""

from __future__ import annotations

import uuid
from typing import Any

from prism_plugin_clickhouse import ClickHousePlugin

from prism._proto.prism.data.v1 import QueryRequest, Value
from prism.sdk.testing import PluginHarness


def config_for(server: Any, **overrides: Any) -> dict[str, Any]:
    connection = server.connection
    config: dict[str, Any] = {
        "host": connection["host"],
        "port": connection["port"],
        "pool_size": 2,
        "client_name": f"prism-test-{uuid.uuid4().hex[:8]}",
    }
    config.update(overrides)
    return config


def harness(server: Any, **overrides: Any) -> PluginHarness:
    return PluginHarness(
        ClickHousePlugin,
        config=config_for(server, **overrides),
        credentials=server.credentials.as_map(),
    )


def table() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


async def query(h: PluginHarness, sql: str, *params: Value) -> list[list[Value]]:
    result = await h.execute("query", QueryRequest(sql=sql, params=list(params)))
    return [list(row.values) for row in result.rows]  # type: ignore[union-attr]
