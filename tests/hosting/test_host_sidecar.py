"""Sidecar (and remote) plugins seen from outside: a private socket, bytes forwarded without
decoding, the plugin's output in the proxy's log, resource limits, and no orphan when the proxy
is killed. The plugin double below is served from this very module (``module:Class``)."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import betterproto2
import pytest
import trio
from host_testkit import (
    EXECUTE,
    EXECUTE_STREAM,
    HERE,
    REPO,
    child_pids,
    free_port,
    namespace,
    pid_alive,
    proxy_config,
    remote_service,
    request,
    running_proxy,
)

import prism._proto.google.protobuf as protobuf
import prism._proto.prism.plugin.v1 as plugin_pb
import prism._proto.prism.proxy.v1 as proxy_pb
from prism._proto.prism.proxy.v1 import StreamRequest, StreamResponse
from prism.config import LimitsConfig
from prism.sdk import BackendPlugin, OperationContext, OperationStream, operation, stream_operation
from prism.sdk.typed import pack, unpack

# -- the plugin double: its message type exists only here, in its own pool --------------------

default_message_pool = betterproto2.MessagePool()


@dataclass(eq=False, repr=False)
class Opaque(betterproto2.Message):
    blob: bytes = betterproto2.field(1, betterproto2.TYPE_BYTES)
    note: str = betterproto2.field(2, betterproto2.TYPE_STRING)


default_message_pool.register_message("acme.opaque.v1", "Opaque", Opaque)


class OpaqueEcho(BackendPlugin):
    name = "opaque-echo"
    config_required = False

    @operation("echo", params=Opaque, result=Opaque)
    async def echo(self, params: Opaque, ctx: OperationContext) -> Opaque:
        self.logger.info("echoing %d bytes", len(params.blob))
        print(f"stdout: echo for {params.note}", flush=True)
        return Opaque(blob=params.blob[::-1], note=params.note + ":seen")

    @stream_operation("repeat", params=Opaque, result=Opaque)
    async def repeat(self, params: Opaque, stream: OperationStream) -> None:
        for i in range(3):
            await stream.send(Opaque(blob=params.blob, note=f"{params.note}:{i}"))

    @operation("rlimits", params=bytes, result=bytes)
    async def rlimits(self, params: bytes, ctx: OperationContext) -> bytes:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"{soft},{hard}".encode()


ECHO = f"{Path(__file__).stem}:OpaqueEcho"
# The sidecar (or remote service) imports this module by name.
PLUGIN_ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def runtime_parent() -> Iterator[Path]:
    # Short, so socket paths stay well under the 107-byte limit.
    path = Path(tempfile.mkdtemp(prefix="prism-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in PLUGIN_ENV.items():
        monkeypatch.setenv(key, value)


def sidecar(name: str = "echo", **settings: object) -> object:
    return namespace(name, ECHO, "sidecar", health_interval=3600, **settings)


# -- tests ------------------------------------------------------------------------------------


async def test_host_sidecar_socket_is_private_while_running(
    runtime_parent: Path, plugin_env: None
) -> None:
    config = proxy_config(sidecar(), runtime_dir=runtime_parent)  # type: ignore[arg-type]
    async with running_proxy(config) as running:
        instance = running.proxy.host.route("echo").current
        assert instance is not None
        assert instance.address is not None
        assert instance.address.startswith("unix:")
        socket_path = Path(instance.address.removeprefix("unix:"))
        runtime_dir = socket_path.parent
        assert runtime_dir.parent == runtime_parent
        dir_stat, sock_stat = os.stat(runtime_dir), os.lstat(socket_path)
        assert stat.S_IMODE(dir_stat.st_mode) == 0o700
        assert stat.S_ISSOCK(sock_stat.st_mode)
        assert stat.S_IMODE(sock_stat.st_mode) == 0o600
        assert sock_stat.st_uid == dir_stat.st_uid == os.geteuid()
        await running.proxy.stop()
    assert not runtime_dir.exists()  # removed with the instance


@pytest.mark.parametrize("mode", ["sidecar", "remote"])
async def test_host_forwards_opaque_payloads_without_decoding(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_env: None
) -> None:
    with remote_service(tmp_path, ECHO, PLUGIN_ENV) if mode == "remote" else _nothing() as svc:
        ns = svc.namespace("echo", health_interval=3600) if svc is not None else sidecar()
        async with running_proxy(proxy_config(ns)) as running:  # type: ignore[arg-type]
            params = Opaque(blob=bytes(range(256)) * 16, note="n")
            with monkeypatch.context() as m:
                # From here on the proxy process cannot decode a request, a response or an Any.
                for cls in (
                    proxy_pb.ExecuteRequest,
                    proxy_pb.ExecuteResponse,
                    proxy_pb.StreamRequest,
                    proxy_pb.StreamResponse,
                    plugin_pb.ExecuteRequest,
                    plugin_pb.ExecuteResponse,
                    plugin_pb.StreamRequest,
                    plugin_pb.StreamResponse,
                    protobuf.Any,
                    Opaque,
                ):
                    m.setattr(cls, "parse", classmethod(_no_decoding))
                raw = await running.channel.unary_unary(
                    EXECUTE, request("echo", "echo", params), bytes
                )
                async with running.channel.stream(EXECUTE_STREAM, bytes) as call:
                    first = StreamRequest(
                        namespace="echo", operation="repeat", typed_params=pack(params)
                    )
                    await call.send_message(bytes(first))
                    await call.end()
                    streamed = [message async for message in call]
            response = proxy_pb.ExecuteResponse.parse(raw)
            assert response.typed_result is not None
            assert response.typed_result.type_url == "type.googleapis.com/acme.opaque.v1.Opaque"
            echoed = unpack(response.typed_result, Opaque)
            assert echoed.blob == params.blob[::-1]
            assert echoed.note == "n:seen"
            notes = [
                unpack(StreamResponse.parse(m).typed_result, Opaque).note for m in streamed[:3]
            ]
            assert notes == ["n:0", "n:1", "n:2"]
            assert StreamResponse.parse(streamed[3]).is_final


def _no_decoding(cls: type, data: bytes) -> object:
    raise AssertionError(f"the proxy decoded a {cls.__name__}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_host_sidecar_output_is_logged_under_its_namespace(
    caplog: pytest.LogCaptureFixture, plugin_env: None
) -> None:
    caplog.set_level(logging.INFO, logger="prism.plugin")
    async with running_proxy(proxy_config(sidecar())) as running:  # type: ignore[arg-type]
        await running.execute("echo", "echo", Opaque(blob=b"abcd", note="log-test"))
        pid = running.proxy.host.route("echo").current.pid  # type: ignore[union-attr]

        def forwarded() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "prism.plugin.echo"]

        with trio.fail_after(5):
            while not any("log-test" in r.getMessage() for r in forwarded()):  # noqa: ASYNC110
                await trio.sleep(0.01)
            while not any("echoing 4 bytes" in r.getMessage() for r in forwarded()):  # noqa: ASYNC110
                await trio.sleep(0.01)
    records = forwarded()
    logged = next(r for r in records if "echoing 4 bytes" in r.getMessage())
    # The plugin's own log line (its runner writes "LEVEL logger: message" on stderr) keeps its
    # level and names the plugin's logger; the record carries the namespace and the pid.
    assert logged.getMessage() == "INFO prism.plugin.opaque-echo: echoing 4 bytes"
    assert logged.levelno == logging.INFO
    assert (logged.plugin, logged.plugin_stream, logged.plugin_pid) == ("echo", "stderr", pid)  # type: ignore[attr-defined]
    printed = next(r for r in records if "log-test" in r.getMessage())
    assert printed.getMessage() == "stdout: echo for log-test"
    assert (printed.plugin_stream, printed.levelno) == ("stdout", logging.INFO)  # type: ignore[attr-defined]


async def test_host_sidecar_resource_limits_apply(plugin_env: None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(200, soft)
    ns = sidecar(limits=LimitsConfig(open_files=wanted))
    async with running_proxy(proxy_config(ns)) as running:  # type: ignore[arg-type]
        response = await running.execute("echo", "rlimits", b"")
    assert response.raw_result == f"{wanted},{wanted}".encode()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)  # the proxy's own: intact


def _start_proxy(config: Path, log_path: Path, nth: int) -> subprocess.Popen[bytes]:
    """Start ``prism serve``, logging to ``log_path``; it is the ``nth`` proxy on that log."""
    with log_path.open("ab") as log:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "prism.cli.main", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 60
    while log_path.read_text().count("prism listening") < nth:
        assert proxy.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.05)
    return proxy


def test_host_sidecar_exits_when_proxy_is_sigkilled(tmp_path: Path) -> None:
    """SIGKILL the proxy: its sidecar processes (the serving one and its warm standby) die with
    it, and the runtime directories it could not remove are removed by the next start, while a
    directory that is not a proxy's is left alone."""
    port = free_port()
    runtime = tmp_path / "run"
    config = tmp_path / "prism.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "admin: {enabled: false}\n"
        f"runtime_dir: {runtime}\n"
        "namespaces:\n"
        "  - name: kv\n"
        "    plugin: {name: memstore, mode: sidecar}\n"
    )
    (runtime / "prism-not-ours").mkdir(parents=True)
    log_path = tmp_path / "proxy.log"
    log_path.touch()
    proxy = _start_proxy(config, log_path, 1)
    second: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while len(children := child_pids(proxy.pid)) < 2:  # the standby follows the first
            assert time.monotonic() < deadline, "no standby sidecar was launched"
            time.sleep(0.05)
        assert len(children) == 2
        assert all(pid_alive(pid) for pid in children)
        left = [p for p in runtime.iterdir() if p.name.startswith("prism-kv-")]
        assert len(left) == 1
        proxy.send_signal(signal.SIGKILL)
        proxy.wait()
        killed = time.monotonic()
        while any(pid_alive(pid) for pid in children):
            assert time.monotonic() - killed < 10.0, "a sidecar outlived the proxy"
            time.sleep(0.01)
        assert left[0].exists()  # a SIGKILLed proxy cannot clean up after itself

        second = _start_proxy(config, log_path, 2)
        assert not left[0].exists()  # its owner is gone: removed at the next start
        assert (runtime / "prism-not-ours").exists()  # no owner file: not a proxy's
        mine = [p for p in runtime.iterdir() if p.name.startswith("prism-kv-")]
        assert len(mine) == 1  # the live proxy's own directory stays
        assert "removed 1 stale sidecar runtime directory" in log_path.read_text()
    finally:
        for process in (proxy, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
