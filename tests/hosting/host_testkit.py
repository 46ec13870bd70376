"""Helpers for the plugin host tests: proxies built in the test, certificates, a remote plugin
service in a real process, and calls through the proxy's front door."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import betterproto2
import trio
import trustme

from prism import grpc as pg
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import (
    AdminConfig,
    NamespaceConfig,
    PluginConfig,
    ProxyConfig,
    RemoteTlsConfig,
)
from prism.proxy.app import Proxy
from prism.sdk.typed import pack, unpack

EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

M = TypeVar("M", bound=betterproto2.Message)


_SERVING = re.compile(r"serving on 127\.0\.0\.1:(?P<port>\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Certs:
    """A CA, the remote plugin's server certificate (127.0.0.1) and the proxy's client one."""

    ca: Path
    server: Path  # key and certificate chain in one PEM
    client: Path

    @classmethod
    def make(cls, directory: Path) -> Certs:
        ca = trustme.CA()
        certs = cls(directory / "ca.pem", directory / "server.pem", directory / "client.pem")
        ca.cert_pem.write_to_path(str(certs.ca))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_and_cert_chain_pem.write_to_path(str(certs.server))
        client = ca.issue_cert("prism-proxy.test")
        client.private_key_and_cert_chain_pem.write_to_path(str(certs.client))
        return certs

    def remote_tls(self) -> RemoteTlsConfig:
        return RemoteTlsConfig(ca=self.ca, cert=self.client, key=self.client)


@dataclass
class RemoteService:
    """``prism plugin serve <plugin>`` in a subprocess on a loopback port, mTLS both ways."""

    process: subprocess.Popen[bytes]
    endpoint: str
    log: Path
    certs: Certs

    plugin: str

    def namespace(
        self, name: str, config: Mapping[str, Any] | None = None, **plugin: Any
    ) -> NamespaceConfig:
        return NamespaceConfig(
            name,
            PluginConfig(
                self.plugin,
                mode="remote",
                endpoint=self.endpoint,
                tls=self.certs.remote_tls(),
                **plugin,
            ),
            config=dict(config or {}),
            access={"anonymous": True},  # the tests' callers send no credentials
        )


@contextmanager
def remote_service(
    directory: Path,
    plugin: str = "memstore",
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    certs: Certs | None = None,
) -> Iterator[RemoteService]:
    """Start the service and wait until it accepts connections; SIGTERM it on the way out."""
    certs = certs or Certs.make(directory)
    # Without a port the service binds port 0 and the log says which it got: a port picked
    # here and released would be free for any other process to take before the service binds.
    listen = f"127.0.0.1:{port or 0}"
    log = directory / f"remote-{port or 'any'}-{time.monotonic_ns()}.log"
    command = [
        sys.executable,
        "-m",
        "prism.cli.main",
        "plugin",
        "serve",
        plugin,
        "--listen",
        listen,
        "--tls-cert",
        str(certs.server),
        "--tls-key",
        str(certs.server),
        "--tls-client-ca",
        str(certs.ca),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        deadline = time.monotonic() + 60  # generous: a busy machine starts Python slowly
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"remote plugin service exited: {log.read_text()}")
            serving = _SERVING.search(log.read_text(errors="replace"))
            if serving is not None:
                port = int(serving["port"])
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"remote plugin service did not start: {log.read_text()}")
            time.sleep(0.05)
        yield RemoteService(process, f"127.0.0.1:{port}", log, certs, plugin)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def proxy_config(*namespaces: NamespaceConfig, **overrides: Any) -> ProxyConfig:
    """A proxy on a free loopback port, admin API off, short grace periods."""
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": AdminConfig(enabled=False, listen=None),
        "shutdown_grace": 2.0,
        "namespaces": namespaces,
    }
    settings.update(overrides)
    return ProxyConfig(**settings)


def namespace(
    name: str,
    plugin: str = "memstore",
    mode: str = "in_process",
    config: Mapping[str, Any] | None = None,
    **plugin_settings: Any,
) -> NamespaceConfig:
    return NamespaceConfig(
        name,
        PluginConfig(plugin, mode=mode, **plugin_settings),  # type: ignore[arg-type]
        config=dict(config or {}),
        access={"anonymous": True},  # the tests' callers send no credentials
    )


@dataclass
class Running:
    proxy: Proxy
    channel: pg.Channel
    target: str
    nursery: trio.Nursery = field(repr=False)

    async def execute(
        self,
        ns: str,
        operation: str,
        params: betterproto2.Message | bytes | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ExecuteResponse:
        return await execute(self.channel, ns, operation, params, metadata)


@asynccontextmanager
async def running_proxy(config: ProxyConfig) -> AsyncIterator[Running]:
    """A started proxy and a channel to its front door; leaving stops the proxy."""
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config).run)
        assert proxy.address is not None
        target = f"{proxy.address[0]}:{proxy.address[1]}"
        try:
            async with pg.open_channel(target) as channel:
                yield Running(proxy, channel, target, nursery)
        finally:
            nursery.cancel_scope.cancel()


def request(
    ns: str,
    operation: str,
    params: betterproto2.Message | bytes | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ExecuteRequest:
    message = ExecuteRequest(namespace=ns, operation=operation, metadata=dict(metadata or {}))
    if isinstance(params, bytes):
        message.raw_params = params
    elif params is not None:
        message.typed_params = pack(params)
    return message


async def execute(
    channel: pg.Channel,
    ns: str,
    operation: str,
    params: betterproto2.Message | bytes | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ExecuteResponse:
    response: ExecuteResponse = await channel.unary_unary(
        EXECUTE, request(ns, operation, params, metadata), ExecuteResponse
    )
    return response


def result(response: ExecuteResponse, cls: type[M]) -> M:
    return unpack(response.typed_result, cls)


def pid_alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children
