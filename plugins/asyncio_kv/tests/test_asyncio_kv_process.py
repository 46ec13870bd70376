"""The plugin process on its own: run by hand, the handshake as the proxy checks it, and the
three ways it ends (Shutdown answered, stdin closed, SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from prism import grpc as pg
from prism._proto.prism.plugin.v1 import (
    InitializeRequest,
    InitializeResponse,
    ShutdownRequest,
    ShutdownResponse,
)
from prism.plugin_protocol.handshake import (
    ENV_MAGIC_COOKIE,
    ENV_PROTOCOL_VERSIONS,
    ENV_SOCKET,
    MAGIC_COOKIE,
    check_plugin_socket,
    parse_handshake,
)

SERVICE = "/prism.plugin.v1.BackendPlugin/"
COMMAND = [sys.executable, "-m", "prism_plugin_asyncio_kv"]


def _env_without_cookie() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PRISM_PLUGIN_")}


def test_asyncio_kv_run_by_hand_explains_and_exits_1() -> None:
    result = subprocess.run(
        COMMAND,
        env=_env_without_cookie(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "is a Prism plugin" in result.stderr
    assert "not meant to be executed directly" in result.stderr
    assert result.stdout == ""


def test_asyncio_kv_imports_neither_trio_nor_prism() -> None:
    code = (
        "import sys, prism_plugin_asyncio_kv, prism_plugin_asyncio_kv.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'prism'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_asyncio_kv_refuses_a_proxy_without_a_common_protocol_version(tmp_path: Path) -> None:
    env = {
        **_env_without_cookie(),
        ENV_MAGIC_COOKIE: MAGIC_COOKIE,
        ENV_PROTOCOL_VERSIONS: "7,8",
        ENV_SOCKET: str(tmp_path / "p.sock"),
    }
    result = subprocess.run(
        COMMAND, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "the proxy offered 7,8" in result.stderr


@dataclass
class Launched:
    process: trio.Process
    stdin: trio.abc.SendStream
    socket: Path


@asynccontextmanager
async def launch(runtime_dir: Path) -> AsyncIterator[Launched]:
    """Start the plugin as the proxy does and wait for its handshake line."""
    socket = runtime_dir / "plugin-1.sock"
    env = {
        **_env_without_cookie(),
        ENV_MAGIC_COOKIE: MAGIC_COOKIE,
        ENV_PROTOCOL_VERSIONS: "1",
        ENV_SOCKET: str(socket),
    }
    process = await trio.lowlevel.open_process(
        COMMAND, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the plugin exited before its handshake"
                line += chunk
        handshake = parse_handshake(line.decode())
        assert handshake.socket_path == socket
        check_plugin_socket(socket, runtime_dir)  # the proxy's own check: inside, ours, 0600
        yield Launched(process, process.stdin, socket)
    finally:
        with trio.move_on_after(10) as scope:
            await process.wait()
        if scope.cancelled_caught:
            process.kill()
            await process.wait()
        await process.stdin.aclose()
        await process.stdout.aclose()


@pytest.fixture
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A short path: a Unix socket path holds at most 107 bytes.
    path = Path(tmp_path_factory.mktemp("kv"))
    path.chmod(0o700)
    return path


async def test_asyncio_kv_exits_after_answering_shutdown(runtime_dir: Path) -> None:
    async with launch(runtime_dir) as plugin:
        async with pg.open_channel(f"unix:{plugin.socket}") as channel:
            with trio.fail_after(10):
                init = await channel.unary_unary(
                    SERVICE + "Initialize", InitializeRequest(namespace="kv"), InitializeResponse
                )
                assert init.success, init.error
                assert init.supported_operations == ["get", "set", "delete", "multi_get", "set:ttl"]
                response = await channel.unary_unary(
                    SERVICE + "Shutdown",
                    ShutdownRequest(grace_period_ms=1000, reason="test"),
                    ShutdownResponse,
                )
                assert response.success
        with trio.fail_after(10):
            assert await plugin.process.wait() == 0
        assert not plugin.socket.exists()


async def test_asyncio_kv_exits_when_stdin_closes(runtime_dir: Path) -> None:
    async with launch(runtime_dir) as plugin:
        await plugin.stdin.aclose()
        with trio.fail_after(10):
            assert await plugin.process.wait() == 0


async def test_asyncio_kv_exits_on_sigterm(runtime_dir: Path) -> None:
    async with launch(runtime_dir) as plugin:
        plugin.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await plugin.process.wait() == 0
