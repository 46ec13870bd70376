"""Helpers for the client tests: a real proxy (``prism.serve``) on a free loopback port, with
namespaces ``kv`` (memstore), ``db`` (sqlite in the test's directory) and ``probe``
(``client_plugins.ProbePlugin``), reached with ``prism.client`` over TCP.

Tests on Trio's autojump clock use ``memory_client``: a proxy without ``db``, whose plugin
works in a thread while the loop waits (the virtual clock would jump past its startup
timeout). Everything else runs in the test's loop, where data sent over loopback is readable
at once, so the clock only jumps when every task really waits for time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import prism
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig


def config(tmp_path: Path | None, **overrides: Any) -> ProxyConfig:
    """``tmp_path`` None: no ``db`` namespace."""
    namespaces = [
        NamespaceConfig(name="kv", plugin=PluginConfig(name="memstore")),
        NamespaceConfig(name="probe", plugin=PluginConfig(name="client_plugins:ProbePlugin")),
    ]
    if tmp_path is not None:
        namespaces.append(
            NamespaceConfig(
                name="db",
                plugin=PluginConfig(name="sqlite"),
                config={"path": str(tmp_path / "db.sqlite3")},
            )
        )
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": AdminConfig(enabled=False, listen=None),
        "shutdown_grace": 2.0,
        "namespaces": tuple(namespaces),
    }
    settings.update(overrides)
    return ProxyConfig(**settings)


@asynccontextmanager
async def serving(proxy_config: ProxyConfig) -> AsyncIterator[prism.RunningProxy]:
    async with trio.open_nursery() as nursery:
        running: prism.RunningProxy = await nursery.start(prism.serve, proxy_config)
        yield running
        nursery.cancel_scope.cancel()
