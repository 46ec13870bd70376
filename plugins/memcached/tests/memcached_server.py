"""Helpers for the memcached plugin's tests: a real ``memcached`` (the acceptance framework's
``tests/acceptance/backends.py``; ``conftest.py`` starts one per test, since these tests stop
and pause it) and the plugin's config for it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "acceptance"))

from backends import MemcachedServer, sigstop

__all__ = ["MemcachedServer", "config", "sigstop"]


def config(server: MemcachedServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.connection["port"], "pool_size": 2, **extra}
