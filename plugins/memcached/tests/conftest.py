from __future__ import annotations

from collections.abc import Iterator

import pytest
from memcached_server import MemcachedServer


@pytest.fixture
def memcached_server() -> Iterator[MemcachedServer]:
    """A memcached of the test's own, stopped at the end (whatever happened)."""
    server = MemcachedServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
