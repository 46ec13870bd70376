"""Helpers for the redis plugin's tests: a real ``redis-server`` (the acceptance framework's
``tests/acceptance/backends.py``; ``conftest.py`` starts one per test, since these tests stop,
pause and reconfigure it) and the plugin's config for it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "acceptance"))

from backends import RedisServer, sigstop

__all__ = ["RedisServer", "config", "sigstop"]


def config(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.connection["port"], "pool_size": 2, **extra}
