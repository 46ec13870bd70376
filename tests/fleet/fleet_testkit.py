"""Config documents, a running proxy whose config comes from etcd, and ``prism serve``
processes (one, or a fleet of them) as an operator runs them."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from etcd_server import free_port
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


REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("prism")
PRISM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prism.cli.main"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def url(target: EtcdTarget) -> str:
    """``etcd://HOST:PORT/PREFIX`` (``https://...`` as it is)."""
    return target.endpoint.replace("http://", "etcd://") + target.prefix


async def prism(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*PRISM, *args], capture_stdout=True, capture_stderr=True, check=False, env=ENV
    )


@asynccontextmanager
async def serving(
    directory: Path, target: EtcdTarget, port: int, *extra: str
) -> AsyncIterator[Path]:
    """``prism serve --config etcd://... [extra]`` until the block ends (then SIGKILL); yields
    its log once it listens."""
    log = directory / f"prism-{port}.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [
                *PRISM,
                "serve",
                "--config",
                url(target),
                "--config-cache",
                str(directory / "cache.json"),
                "--listen",
                f"127.0.0.1:{port}",
                "--admin",
                "off",
                "--log-format",
                "text",
                *extra,
            ],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        while "prism listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            await trio.sleep(0.05)
        yield log
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()


async def serves(address: str, namespace: str) -> None:
    """Until ``namespace`` answers calls at ``address`` (the caller bounds the wait)."""
    async with pg.open_channel(address) as front:
        while True:
            try:
                await set_(front, namespace, "k", namespace.encode())
                assert await get(front, namespace, "k") == namespace.encode()
                return
            except pg.GrpcError:
                await trio.sleep(0.05)


@dataclass(frozen=True)
class FleetProxy:
    """One ``prism serve`` of a fleet: its member id, front-door address and log."""

    member: str
    address: str
    log: Path


@asynccontextmanager
async def fleet(
    directory: Path, target: EtcdTarget, size: int = 3, *extra: str
) -> AsyncIterator[list[FleetProxy]]:
    """``size`` proxies (``prism serve --config etcd://...``, member ids ``proxy-1``...) on free
    loopback ports, each with its own directory and config cache; SIGKILLed when the block
    ends."""
    async with AsyncExitStack() as stack:
        proxies = []
        for i in range(1, size + 1):
            home = directory / f"proxy-{i}"
            home.mkdir()
            port = free_port()
            member = f"proxy-{i}"
            log = await stack.enter_async_context(
                serving(home, target, port, "--member-id", member, *extra)
            )
            proxies.append(FleetProxy(member, f"127.0.0.1:{port}", log))
        yield proxies
