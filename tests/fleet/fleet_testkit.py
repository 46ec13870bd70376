"""Config documents and a running proxy whose config comes from etcd."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from host_testkit import execute, result

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism.etcd import EtcdTarget, parse_target
from prism.fleet.source import EtcdConfigSource, Initial, read_initial
from prism.proxy.app import Proxy

_prefixes = itertools.count()


def new_target(endpoint: str) -> EtcdTarget:
    """A key prefix no other test uses (the etcd server is shared by the module)."""
    return parse_target(endpoint.replace("http://", "etcd://") + f"/fleet-test/{next(_prefixes)}")


def unreachable(target: EtcdTarget) -> EtcdTarget:
    """``target``'s prefix on a port where no etcd listens (etcd down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return parse_target(f"etcd://127.0.0.1:{port}{target.prefix}")


def ns(name: str, **plugin: Any) -> dict[str, Any]:
    return {"name": name, "plugin": {"name": "memstore", **plugin}, "access": {"anonymous": True}}


def document(*namespaces: dict[str, Any], **top: Any) -> bytes:
    doc = {
        "listen": "127.0.0.1:0",
        "admin": {"enabled": False},
        "shutdown_grace": 1.0,
        "namespaces": list(namespaces),
        **top,
    }
    return json.dumps(doc).encode()


@asynccontextmanager
async def running(
    target: EtcdTarget, cache: Path
) -> AsyncIterator[tuple[Proxy, EtcdConfigSource, pg.Channel]]:
    """A proxy started from ``target``'s config (or the cache), watching it."""
    async with running_from(target, cache, await read_initial(target, cache)) as running:
        yield running


@asynccontextmanager
async def running_from(
    target: EtcdTarget, cache: Path, initial: Initial
) -> AsyncIterator[tuple[Proxy, EtcdConfigSource, pg.Channel]]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(initial.config).run)
        source = EtcdConfigSource(target, cache, initial)
        await nursery.start(source.run, proxy)
        assert proxy.address is not None
        async with pg.open_channel("{}:{}".format(*proxy.address)) as front:
            yield proxy, source, front
        nursery.cancel_scope.cancel()


async def get(front: pg.Channel, namespace: str, key: str) -> bytes:
    return result(await execute(front, namespace, "get", GetRequest(key=key)), GetResponse).value


async def set_(front: pg.Channel, namespace: str, key: str, value: bytes) -> None:
    await execute(front, namespace, "set", SetRequest(key=key, value=value))


async def wait_for(source: EtcdConfigSource, revision: int) -> None:
    """Until ``source`` has applied (or rejected) ``revision``; the caller bounds the wait."""
    while source.applied_revision < revision and not (
        source.last_error and f"revision {revision} " in source.last_error
    ):
        await source.changed()
