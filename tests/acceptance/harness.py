"""Opening a check's context against a target in one mode (see kit.Ctx)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
from kit import Ctx, HarnessClient, ProxyClient

from prism import grpc as pg
from prism.sdk.testing import PluginHarness

if TYPE_CHECKING:
    from conftest import Env
    from targets import Target


def unique_prefix(name: str) -> str:
    """Keys, topics and tables of one test: backends and plugin instances are shared."""
    short = re.sub(r"[^a-z0-9]+", "_", name.lower())[:32]
    return f"{short}_{uuid.uuid4().hex[:8]}/"


@asynccontextmanager
async def open_ctx(
    env: Env,
    target: Target,
    mode: str,
    name: str,
    *,
    config: Mapping[str, Any] | None = None,
    credentials: Mapping[str, str] | None = None,
) -> AsyncIterator[Ctx]:
    if target.backend is not None:
        await trio.to_thread.run_sync(env.backend, target.backend)
    common: dict[str, Any] = {
        "target": target,
        "mode": mode,
        "capabilities": target.capabilities,
        "prefix": unique_prefix(name),
        "inspector": target.inspector(env),
        "sql_inspector": target.sql_inspector(env),
        "limits": target.limits,
    }
    if mode == "direct":
        assert target.factory is not None, f"{target.name} is not an SDK plugin"
        async with PluginHarness(
            target.factory,
            config=dict(config if config is not None else target.config(env)),
            credentials=credentials if credentials is not None else target.credentials(env),
            namespace=env.namespace(target, mode),
        ) as harness:
            yield Ctx(client=HarnessClient(harness), **common)
        return
    address = await trio.to_thread.run_sync(env.proxy_address)
    async with pg.open_channel(address) as channel:
        yield Ctx(client=ProxyClient(channel, env.namespace(target, mode), mode), **common)
