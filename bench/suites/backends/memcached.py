"""Memcached in the `backends` suite: memcached, the memcached plugin in-process and as a
sidecar, and pymemcache called directly as the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.suites.backends import Backend, Direct, Running, register
from bench.suites.backends.servers import module

PREFIX = "bench:"


class MemcachedDirect(Direct):
    """pymemcache, sync; a PooledClient shared by the caller threads."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from pymemcache.client.base import PooledClient

        self.client = PooledClient((spec["host"], spec["port"]), max_pool_size=64, timeout=30)

    def seed(self, keys: Sequence[str], value: bytes) -> None:
        self.client.set_many({k: value for k in keys})

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.client.get(key)
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = self.client.get_many(keys)  # one multi-key "get k1 k2 ..."
        return [found.get(k) for k in keys]

    def close(self) -> None:
        self.client.close()


class MemcachedRunning(Running):
    def __init__(self, tmp: Path) -> None:
        self.server = module().MemcachedServer()
        self.server.start()

    def namespaces(self) -> dict[str, dict[str, Any]]:
        port = self.server.connection["port"]
        return {
            f"memcached-{mode}": {
                "plugin": {"name": "memcached", "mode": mode},
                "config": {"port": port, "pool_size": 8, "key_prefix": PREFIX},
            }
            for mode in ("in_process", "sidecar")
        }

    def direct_spec(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.connection["port"]}

    def stop(self) -> None:
        self.server.stop()


register(
    Backend(
        name="memcached",
        label="Memcached GET",
        direct_label="pymemcache (sync)",
        bulk_label="pymemcache get_many",
        start=MemcachedRunning,
        direct=MemcachedDirect,
        packages=("pymemcache",),
    )
)
