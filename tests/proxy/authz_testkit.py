"""What the authorization, audit and discovery tests share: a real proxy whose callers say who
they are in a metadata entry.

:class:`HeaderIdentity` stands in for the authentication stage (prism/proxy/authn.py, built
separately): it reads the identity a test wants from ``x-test-identity`` (JSON), so every
authorization rule can be checked with any identity over a real front door.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from host_testkit import Running, proxy_config

from prism import grpc as pg
from prism.config import NamespaceConfig, PluginConfig
from prism.proxy.app import Proxy
from prism.proxy.request import ANONYMOUS, Identity, RequestInfo

IDENTITY = "x-test-identity"


class HeaderIdentity:
    """The caller is who ``x-test-identity`` (JSON) says; without it, anonymous."""

    async def authenticate(self, call: pg.ServerCall, info: RequestInfo) -> Identity:
        raw = dict(call.metadata).get(IDENTITY)
        if raw is None:
            return ANONYMOUS
        data: dict[str, Any] = json.loads(raw)
        return Identity(
            data["subject"],
            data.get("source", "jwt"),
            claims=data.get("claims", {}),
            scopes=frozenset(data.get("scopes", ())),
            sans=tuple((kind, value) for kind, value in data.get("sans", ())),
        )


def who(subject: str, **fields: Any) -> list[tuple[str, str]]:
    """The metadata of a caller with ``subject`` (and claims=, scopes=, sans=, source=)."""
    return [(IDENTITY, json.dumps({"subject": subject, **fields}))]


def ns(
    name: str, *, anonymous: bool = False, rules: list[dict[str, Any]] | None = None
) -> NamespaceConfig:
    """A memstore namespace with this access."""
    return NamespaceConfig(
        name, PluginConfig("memstore"), access={"anonymous": anonymous, "rules": rules or []}
    )


@asynccontextmanager
async def proxy(*namespaces: NamespaceConfig, **overrides: Any) -> AsyncIterator[Running]:
    """A started proxy whose callers are authenticated by :class:`HeaderIdentity`."""
    config = proxy_config(*namespaces, **overrides)
    async with trio.open_nursery() as nursery:
        app = Proxy(config)
        app.pipeline.authenticator = HeaderIdentity()
        started: Proxy = await nursery.start(app.run)
        assert started.address is not None
        target = f"{started.address[0]}:{started.address[1]}"
        try:
            async with pg.open_channel(target) as channel:
                yield Running(started, channel, target, nursery)
        finally:
            nursery.cancel_scope.cancel()
