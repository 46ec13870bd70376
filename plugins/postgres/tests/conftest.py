"""A real PostgreSQL 15 for the plugin's tests: the acceptance framework's server fixture
(``tests/acceptance/backends.py``: initdb in a temporary directory, SCRAM, a free loopback
port), one per test session, plus a server of its own for a test that stops it."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCEPTANCE = Path(__file__).resolve().parents[3] / "tests" / "acceptance"
sys.path.insert(0, str(ACCEPTANCE))

from backends import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server for one test (which may stop it)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def config_for(server: PostgresServer, **overrides: Any) -> dict[str, Any]:
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


@pytest.fixture
def config(postgres: PostgresServer) -> dict[str, Any]:
    return config_for(postgres)


@pytest.fixture
def credentials(postgres: PostgresServer) -> dict[str, str]:
    return postgres.credentials.as_map()
