"""What the postgres plugin's tests share beside their fixtures (conftest.py): a module of its
own, because ``from conftest import ...`` finds whichever conftest the whole suite imported
first under that name (tests/proxy's, in one session with every other test)."""

from __future__ import annotations

import uuid
from typing import Any


def config_for(server: Any, **overrides: Any) -> dict[str, Any]:
    connection = server.connection
    config: dict[str, Any] = {
        "host": connection["host"],
        "port": connection["port"],
        "database": connection["database"],
        "create_table": True,
        "table": f"kv_{uuid.uuid4().hex[:12]}",
        "pool_size": 2,
        "application_name": f"prism-test-{uuid.uuid4().hex[:8]}",
    }
    config.update(overrides)
    return config
