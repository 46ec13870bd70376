from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, stopped at the end (whatever happened)."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
