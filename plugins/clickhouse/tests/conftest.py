"""A real ClickHouse 18.16 for the plugin's tests: the acceptance framework's server fixture
(``tests/acceptance/backends.py``: the package's config in a temporary directory, a free
loopback port, a user with a password), one per test session, plus a server of its own for a
test that stops it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ACCEPTANCE = Path(__file__).resolve().parents[3] / "tests" / "acceptance"
sys.path.insert(0, str(ACCEPTANCE))

from backends import ClickHouseServer  # noqa: E402


@pytest.fixture(scope="session")
def clickhouse() -> Iterator[ClickHouseServer]:
    server = ClickHouseServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_clickhouse() -> Iterator[ClickHouseServer]:
    """A server for one test (which may stop it)."""
    server = ClickHouseServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
