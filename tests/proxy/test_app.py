"""``prism serve``: the proxy as its own process on a real socket, checked with prism's client
and with grpcio's health and reflection clients; its stop on SIGTERM; its config errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.sdk.typed import pack, unpack

REPO = Path(__file__).resolve().parents[2]
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
R = TypeVar("R")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prism(*args: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prism.cli.main", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``prism serve`` with the embedded default, listening on a free port."""
    port = free_port()
    log = tmp_path / "prism.log"
    process = prism(
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        "off",
        "--data-dir",
        str(tmp_path / "data"),
        cwd=tmp_path,
        log=log,
    )
    try:
        deadline = time.monotonic() + 30
        while "prism listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "prism serve did not start"
            time.sleep(0.05)
        yield process, f"127.0.0.1:{port}", tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def with_grpcio(target: str, func: Callable[[grpc.Channel], R]) -> R:
    def run() -> R:
        with grpc.insecure_channel(target) as channel:
            return func(channel)

    with trio.fail_after(20):
        return await trio.to_thread.run_sync(run)


async def test_app_prism_serve_default_config_serves_and_stops_on_sigterm(
    served: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    process, target, directory = served
    async with pg.open_channel(target) as channel:
        for ns in ("kv", "durable"):
            await channel.unary_unary(
                EXECUTE,
                ExecuteRequest(
                    namespace=ns,
                    operation="set",
                    typed_params=pack(SetRequest(key="k", value=ns.encode())),
                ),
                ExecuteResponse,
            )
            reply = await channel.unary_unary(
                EXECUTE,
                ExecuteRequest(
                    namespace=ns, operation="get", typed_params=pack(GetRequest(key="k"))
                ),
                ExecuteResponse,
            )
            got = unpack(reply.typed_result, GetResponse)
            assert (got.found, got.value) == (True, ns.encode())
    assert (directory / "data" / "durable.sqlite3").exists()

    def health(channel: grpc.Channel) -> list[int]:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
            for name in ("", "prism.namespace/kv", "prism.namespace/durable")
        ]

    assert await with_grpcio(target, health) == [health_pb2.HealthCheckResponse.SERVING] * 3

    def services(channel: grpc.Channel) -> list[str]:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    listed = await with_grpcio(target, services)
    assert "prism.proxy.v1.DataProxy" in listed
    assert "grpc.health.v1.Health" in listed

    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        while process.poll() is None:  # noqa: ASYNC110 - another process
            await trio.sleep(0.02)
    assert process.returncode == 0
    assert time.monotonic() - stopped < 5  # well within the 10 s shutdown grace


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "namespaces:\n  - name: kv\n    plugin: {name: memstore, colour: blue}\n",
            "prism: namespaces[0].plugin.colour: unknown field",
        ),
        (
            "namespaces:\n  - name: kv\n    plugin: {name: memstore, mode: sideways}\n",
            "prism: namespaces[0].plugin.mode: 'sideways' is not one of in_process, sidecar, "
            "remote",
        ),
        ("listen: 127.0.0.1:0\nlistne: 127.0.0.1:1\n", "prism: listne: unknown field"),
        (
            # Once accepted, it crashed the health loop in a restart cycle.
            "namespaces:\n  - name: kv\n    plugin: {name: memstore, health_interval: .nan}\n",
            "prism: namespaces[0].plugin.health_interval: expected a positive number (seconds), "
            "not NaN or infinity",
        ),
        (
            "listen: 5\nshutdown_grace: .inf\n",
            "prism: listen: expected a string\n"
            "prism: shutdown_grace: expected a positive number (seconds), not NaN or infinity",
        ),
    ],
)
def test_app_prism_serve_config_error_exits_2_naming_the_field(
    tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "prism.yaml"
    path.write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "prism.cli.main", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == message
