"""Redis in the `backends` suite: redis-server with an ACL user, the redis plugin in-process
and as a sidecar, and redis-py (with hiredis) called directly as the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.suites.backends import Backend, Direct, Running, register
from bench.suites.backends.servers import module

PREFIX = "bench:"


class RedisDirect(Direct):
    """redis-py, sync, a connection pool shared by the caller threads; hiredis parses."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import redis

        self.client = redis.Redis(
            host=spec["host"],
            port=spec["port"],
            username=spec["username"],
            password=spec["password"],
            max_connections=64,
        )

    def seed(self, keys: Sequence[str], value: bytes) -> None:
        self.client.mset({k: value for k in keys})

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.client.get(key)
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = self.client.mget(keys)  # one MGET: the "pipelined" baseline
        return values

    def close(self) -> None:
        self.client.close()


class RedisRunning(Running):
    def __init__(self, tmp: Path) -> None:
        self.server = module().RedisServer()
        self.server.start()
        credentials = self.server.credentials
        (tmp / "redis-password").write_text(credentials.password)
        self.password_file = tmp / "redis-password"

    def namespaces(self) -> dict[str, dict[str, Any]]:
        port = self.server.connection["port"]
        credentials = {
            "username": self.server.credentials.username,
            "password": "{{ file:" + str(self.password_file) + " }}",
        }
        return {
            f"redis-{mode}": {
                "plugin": {"name": "redis", "mode": mode},
                "config": {"port": port, "pool_size": 8, "key_prefix": PREFIX},
                "credentials": credentials,
            }
            for mode in ("in_process", "sidecar")
        }

    def direct_spec(self) -> dict[str, Any]:
        credentials = self.server.credentials
        return {
            "host": "127.0.0.1",
            "port": self.server.connection["port"],
            "username": credentials.username,
            "password": credentials.password,
        }

    def stop(self) -> None:
        self.server.stop()


register(
    Backend(
        name="redis",
        label="Redis GET",
        direct_label="redis-py (sync, hiredis)",
        bulk_label="redis-py MGET",
        start=RedisRunning,
        direct=RedisDirect,
        packages=("redis", "hiredis"),
    )
)
