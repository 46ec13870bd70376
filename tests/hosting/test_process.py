from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import MakeSpec
from host_testkit import namespace, proxy_config, result, running_proxy
from hosting_fakes import is_dead, is_reaped, wait_until

from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism.hosting.isolation import ResourceLimits
from prism.hosting.process import (
    ENV_ALLOWED_PREFIXES,
    ENV_ALLOWLIST,
    MAX_LINE,
    ExitStatus,
    PluginExitedError,
    PluginProcess,
    PluginSpec,
    PluginStartTimeout,
)
from prism.hosting.runtime_dirs import create as create_runtime_dir
from prism.plugin_protocol.handshake import HandshakeError, PluginStartError, check_plugin_socket


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Not under tmp_path: its long path would not fit in a Unix socket address.
    path = create_runtime_dir("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _process(spec: PluginSpec, runtime_dir: Path) -> PluginProcess:
    return PluginProcess(spec, socket_path=runtime_dir / "plugin-1.sock", runtime_dir=runtime_dir)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("prism.plugin.")]


def _bind(path: Path, mode: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    os.chmod(path, mode)
    return sock


# --- check_plugin_socket -----------------------------------------------------------------------


def test_check_plugin_socket_accepts_private_socket_in_runtime_dir(runtime_dir: Path) -> None:
    with _bind(runtime_dir / "p.sock", 0o600):
        check_plugin_socket(runtime_dir / "p.sock", runtime_dir)


def test_check_plugin_socket_refuses_socket_readable_by_others(runtime_dir: Path) -> None:
    with _bind(runtime_dir / "p.sock", 0o644), pytest.raises(HandshakeError, match="mode 0644"):
        check_plugin_socket(runtime_dir / "p.sock", runtime_dir)


def test_check_plugin_socket_refuses_missing_socket(runtime_dir: Path) -> None:
    with pytest.raises(HandshakeError, match="must listen before printing its handshake"):
        check_plugin_socket(runtime_dir / "p.sock", runtime_dir)


def test_check_plugin_socket_refuses_regular_file(runtime_dir: Path) -> None:
    (runtime_dir / "p.sock").touch(mode=0o600)

    with pytest.raises(HandshakeError, match="not a Unix socket"):
        check_plugin_socket(runtime_dir / "p.sock", runtime_dir)


def test_check_plugin_socket_refuses_path_outside_runtime_dir(runtime_dir: Path) -> None:
    other = create_runtime_dir("other")
    try:
        with _bind(other / "p.sock", 0o600), pytest.raises(HandshakeError, match="outside"):
            check_plugin_socket(other / "p.sock", runtime_dir)
        with pytest.raises(HandshakeError, match="outside"):
            check_plugin_socket(runtime_dir / ".." / other.name / "p.sock", runtime_dir)
    finally:
        shutil.rmtree(other)


def test_exit_status_describes_signal_and_code() -> None:
    assert str(ExitStatus(3)) == "exit status 3"
    assert str(ExitStatus(-9)) == "killed by SIGKILL"
    assert ExitStatus(-15).signal is signal.SIGTERM
    assert ExitStatus(0).signal is None
    assert str(ExitStatus(-40)) == "killed by signal 40"  # real-time signals have no name


def test_plugin_spec_refuses_command_string() -> None:
    with pytest.raises(TypeError, match="list of arguments"):
        PluginSpec("kv", "python plugin.py")


# --- PluginProcess.run: handshake --------------------------------------------------------------


async def test_plugin_process_run_reports_checked_handshake(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec(), runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handshake = await nursery.start(process.run)

            assert handshake.socket_path == runtime_dir / "plugin-1.sock"
            assert handshake.protocol_version == 1
            assert process.handshake == handshake
            nursery.cancel_scope.cancel()

    assert process.pid is not None
    assert is_reaped(process.pid)


async def test_plugin_process_run_forwards_output_to_plugin_logger(
    make_spec: MakeSpec, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prism.plugin")
    process = _process(make_spec(name="kv"), runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            await wait_until(lambda: "INFO kv.backend: connected" in _messages(caplog))
            nursery.cancel_scope.cancel()

    records = {r.getMessage(): r for r in caplog.records if r.name == "prism.plugin.kv"}
    assert {"booting", "stderr: booting", "serving", "a warning"} <= records.keys()
    assert not any(m.startswith("PRISM|") for m in records)  # the handshake is not log output
    assert records["serving"].levelno == logging.INFO
    assert records["a warning"].levelno == logging.WARNING
    assert records["booting"].levelno == logging.INFO  # before the handshake too
    assert records["stderr: booting"].levelno == logging.WARNING
    assert records["ERROR kv.backend: connection refused"].levelno == logging.ERROR
    assert records["INFO kv.backend: connected"].levelno == logging.INFO  # its own level wins
    assert all(getattr(r, "plugin", None) == "kv" for r in records.values())
    assert records["a warning"].plugin_pid == process.pid  # type: ignore[attr-defined]


async def test_plugin_process_run_forwards_json_lines_as_records_of_their_own(
    make_spec: MakeSpec, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prism.plugin")
    process = _process(make_spec("--json-lines", name="kv", plugin="kvstore"), runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            await wait_until(lambda: "json done" in _messages(caplog))
            nursery.cancel_scope.cancel()

    records = [r for r in caplog.records if r.name == "prism.plugin.kv"]
    (lost,) = [r for r in records if r.getMessage() == "lost the backend"]
    assert lost.levelno == logging.ERROR  # the line's level, not stderr's WARNING
    assert lost.plugin_logger == "kv.backend"  # type: ignore[attr-defined]
    assert lost.trace_id == "ab" * 16  # type: ignore[attr-defined]
    # The namespace and plugin are the proxy's: a line cannot claim another.
    assert (lost.namespace, lost.plugin) == ("kv", "kvstore")  # type: ignore[attr-defined]
    # A line over MAX_LINE arrives in pieces, as text (never parsed, never whole in memory).
    pieces = [r.getMessage() for r in records if "xxxx" in r.getMessage()]
    assert len(pieces) == 2
    assert all(len(piece.encode()) <= MAX_LINE for piece in pieces)
    assert sum(piece.count("x") for piece in pieces) == 70000


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--mode", "644"), "has mode 0644; it must be 0600"),
        (("--version", "7"), "plugin protocol version 7, but the proxy offered only 1"),
        (("--core", "2"), "core protocol version 2"),
        (("--no-bind", "--socket", "/tmp/elsewhere.sock"), "outside the runtime directory"),
        (("--no-bind",), "does not exist"),
    ],
)
async def test_plugin_process_run_refuses_bad_handshake(
    make_spec: MakeSpec, runtime_dir: Path, args: tuple[str, ...], complaint: str
) -> None:
    process = _process(make_spec(*args, name="bad"), runtime_dir)

    with trio.fail_after(10), pytest.raises(HandshakeError) as caught:
        await process.run()

    assert complaint in str(caught.value)
    assert "plugin 'bad'" in str(caught.value)
    assert process.pid is not None
    assert is_reaped(process.pid)


async def test_plugin_process_run_reports_exit_before_handshake_with_stderr(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec("--exit-before-handshake", "5"), runtime_dir)

    with trio.fail_after(10), pytest.raises(PluginExitedError) as caught:
        await process.run()

    assert "exited before its handshake (exit status 5)" in str(caught.value)
    assert "fatal: cannot connect to backend" in str(caught.value)
    assert caught.value.exit_status == ExitStatus(5)


async def test_plugin_process_run_gives_up_after_startup_grace(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec("--no-handshake", startup_grace=0.5), runtime_dir)

    with trio.fail_after(10), pytest.raises(PluginStartTimeout, match=r"within 0\.5 s"):
        await process.run()

    assert process.pid is not None
    assert is_reaped(process.pid)


async def test_plugin_process_run_names_missing_executable(runtime_dir: Path) -> None:
    spec = PluginSpec("ghost", ["/nonexistent/prism-plugin-ghost"])

    with pytest.raises(PluginStartError, match="cannot start '/nonexistent/prism-plugin-ghost'"):
        await _process(spec, runtime_dir).run()


async def test_plugin_process_run_caller_scope_is_the_startup_deadline(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec("--no-handshake"), runtime_dir)

    with trio.move_on_after(0.3) as scope:
        await process.run()

    assert scope.cancelled_caught
    assert process.pid is not None
    assert is_reaped(process.pid)


# --- exit and termination ----------------------------------------------------------------------


async def test_plugin_process_run_returns_exit_status_when_plugin_exits(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec("--crash-after", "0.1", "--exit-code", "3"), runtime_dir)

    with trio.fail_after(10):
        status = await process.run()

    assert status == ExitStatus(3)
    assert process.pid is not None
    assert is_reaped(process.pid)


async def test_plugin_process_cancel_stops_plugin_gracefully(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec(), runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            nursery.cancel_scope.cancel()

    # stdin EOF (exit 0) or SIGTERM, whichever the plugin noticed first; never SIGKILL.
    assert process.exit_status in (ExitStatus(0), ExitStatus(-signal.SIGTERM))


async def test_plugin_process_terminate_sigkills_plugin_ignoring_sigterm_after_grace(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec("--ignore-sigterm", stop_grace=0.5), runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started

    assert process.exit_status == ExitStatus(-signal.SIGKILL)
    assert elapsed >= 0.5
    assert process.pid is not None
    assert is_reaped(process.pid)


async def test_plugin_process_terminate_is_callable_from_another_task(
    make_spec: MakeSpec, runtime_dir: Path
) -> None:
    process = _process(make_spec("--ignore-sigterm"), runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)  # run() is waiting on the process meanwhile
            status = await process.terminate(grace=0.2)

    assert status == ExitStatus(-signal.SIGKILL)


async def test_plugin_process_kills_what_the_plugin_left_behind(
    make_spec: MakeSpec, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prism.plugin")
    process = _process(make_spec("--spawn-child", "--crash-after", "0.3"), runtime_dir)

    with trio.fail_after(10):
        await process.run()

    (line,) = [m for m in _messages(caplog) if m.startswith("child=")]
    child = int(line.removeprefix("child="))
    with trio.fail_after(2):
        await wait_until(lambda: is_dead(child))


# --- environment -------------------------------------------------------------------------------

SECRET = "hunter2-pg-password"
HANDSHAKE_VARS = {
    "PRISM_PLUGIN_MAGIC_COOKIE",
    "PRISM_PLUGIN_SOCKET",
    "PRISM_PLUGIN_PROTOCOL_VERSIONS",
}
#: Set by the sidecar model beside the handshake: the proxy's max_message_size and log level.
MODEL_VARS = {"PRISM_PLUGIN_MAX_MESSAGE_SIZE", "PRISM_PLUGIN_LOG_LEVEL"}


def _environ(pid: int) -> dict[str, str]:
    """What /proc shows of a running process's environment: what any code in it can read."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    assert SECRET.encode() not in raw
    pairs = (entry.split("=", 1) for entry in raw.decode().split("\0") if entry)
    return {name: value for name, value in pairs}


def _allowed(name: str) -> bool:
    # LC_* is allowed as a whole; Python itself may add LC_CTYPE (PEP 538 locale coercion).
    return (
        name in ENV_ALLOWLIST
        or name in HANDSHAKE_VARS
        or name in MODEL_VARS
        or name.startswith(ENV_ALLOWED_PREFIXES)
    )


async def _started_environ(spec: PluginSpec, runtime_dir: Path) -> dict[str, str]:
    process = _process(spec, runtime_dir)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            assert process.pid is not None
            env = _environ(process.pid)
            nursery.cancel_scope.cancel()
    return env


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy environment as an operator's might be: secrets for ``{{ env:... }}``, locale."""
    monkeypatch.setenv("PG_PASSWORD", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("PRISM_SHARED_REGION", "eu-west-1")
    monkeypatch.delenv("PRISM_ABSENT", raising=False)


async def test_plugin_process_starts_with_only_allowlisted_environment(
    make_spec: MakeSpec, runtime_dir: Path, proxy_env: None
) -> None:
    env = await _started_environ(make_spec(), runtime_dir)

    assert "PG_PASSWORD" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "PRISM_SHARED_REGION" not in env
    assert [name for name in env if not _allowed(name)] == []
    assert (env["LC_ALL"], env["TZ"], env["PATH"]) == ("C.UTF-8", "UTC", os.environ["PATH"])
    assert set(env) >= HANDSHAKE_VARS


async def test_plugin_process_environment_adds_what_the_spec_asks_for(
    make_spec: MakeSpec, runtime_dir: Path, proxy_env: None
) -> None:
    spec = make_spec(
        env={"PLUGIN_MODE": "fast", "TZ": "Europe/Paris"},
        inherit_env=("PRISM_SHARED_REGION", "PRISM_ABSENT"),
    )
    env = await _started_environ(spec, runtime_dir)

    assert env["PLUGIN_MODE"] == "fast"
    assert env["TZ"] == "Europe/Paris"  # an explicit value wins over the proxy's
    assert env["PRISM_SHARED_REGION"] == "eu-west-1"
    assert "PRISM_ABSENT" not in env  # names the proxy does not have are skipped
    assert "PG_PASSWORD" not in env


@pytest.mark.parametrize(
    ("settings", "error", "complaint"),
    [
        ({"env": {"A=B": "x"}}, ValueError, "'A=B' is not an environment variable name"),
        ({"env": {"": "x"}}, ValueError, "is not an environment variable name"),
        ({"env": {"MODE": "a\0b"}}, ValueError, "MODE: its value contains a NUL byte"),
        ({"inherit_env": ("A\0",)}, ValueError, "is not an environment variable name"),
        ({"inherit_env": "PATH"}, TypeError, "a list of variable names, not a string"),
        (
            {"env": {"PRISM_PLUGIN_SOCKET": "/tmp/elsewhere"}},
            ValueError,
            "PRISM_PLUGIN_SOCKET is set by the proxy for the handshake",
        ),
    ],
    ids=["equals", "empty", "nul-value", "nul-name", "string", "handshake"],
)
def test_plugin_spec_refuses_bad_environment(
    settings: dict[str, object], error: type[Exception], complaint: str
) -> None:
    with pytest.raises(error, match=complaint):
        PluginSpec("kv", ["plugin"], **settings)  # type: ignore[arg-type]


async def test_plugin_process_sidecar_of_a_namespace_without_credentials_sees_no_secret(
    proxy_env: None,
) -> None:
    """Through the proxy: the secrets in its environment (meant for other namespaces'
    ``{{ env:... }}`` credentials) are not in its sidecars' environments."""
    config = proxy_config(namespace("kv", "memstore", "sidecar", health_interval=3600))
    with trio.fail_after(30):
        async with running_proxy(config) as running:
            instance = running.proxy.host.route("kv").current
            assert instance is not None
            assert instance.pid is not None
            env = _environ(instance.pid)
            assert "PG_PASSWORD" not in env
            assert [name for name in env if not _allowed(name)] == []
            # It found its packages and serves.
            await running.execute("kv", "set", SetRequest(key="k", value=b"v"))
            got = result(await running.execute("kv", "get", GetRequest(key="k")), GetResponse)
            assert (got.found, got.value) == (True, b"v")


async def test_plugin_process_sidecar_gets_the_environment_its_config_names(
    proxy_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``plugin.env`` values and ``plugin.inherit_env`` names reach the sidecar, and nothing
    else of the proxy's environment does."""
    monkeypatch.setenv("PLUGIN_REGION", "eu-west-1")
    config = proxy_config(
        namespace(
            "kv",
            "memstore",
            "sidecar",
            health_interval=3600,
            env={"PLUGIN_MODE": "fast"},
            inherit_env=("PLUGIN_REGION", "NOT_SET_ANYWHERE"),
        )
    )
    with trio.fail_after(30):
        async with running_proxy(config) as running:
            instance = running.proxy.host.route("kv").current
            assert instance is not None
            assert instance.pid is not None
            env = _environ(instance.pid)
            assert env["PLUGIN_MODE"] == "fast"
            assert env["PLUGIN_REGION"] == "eu-west-1"
            assert "NOT_SET_ANYWHERE" not in env
            assert "PG_PASSWORD" not in env
            extra = {"PLUGIN_MODE", "PLUGIN_REGION"}
            assert [name for name in env if not _allowed(name) and name not in extra] == []


# --- isolation ---------------------------------------------------------------------------------


async def _report(process: PluginProcess, caplog: pytest.LogCaptureFixture, key: str) -> str:
    """The first line starting with ``key`` that the fake printed after its handshake."""
    caplog.set_level(logging.INFO, logger="prism.plugin")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
            await wait_until(lambda: any(m.startswith(key) for m in _messages(caplog)))
            nursery.cancel_scope.cancel()
    return next(m for m in _messages(caplog) if m.startswith(key))


async def test_plugin_process_applies_resource_limits(
    make_spec: MakeSpec, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ResourceLimits(memory_bytes=1 << 30, cpu_seconds=120, open_files=64)
    process = _process(make_spec("--report", limits=limits), runtime_dir)

    assert await _report(process, caplog, "RLIMIT_NOFILE") == "RLIMIT_NOFILE=(64, 64)"
    assert next(m for m in _messages(caplog) if m.startswith("RLIMIT_AS=")) == (
        f"RLIMIT_AS=({1 << 30}, {1 << 30})"
    )
    # SIGXCPU at the soft limit, SIGKILL a second later.
    assert "RLIMIT_CPU=(120, 121)" in _messages(caplog)


async def test_plugin_process_memory_limit_makes_big_allocation_fail(
    make_spec: MakeSpec, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ResourceLimits(memory_bytes=512 << 20)
    process = _process(make_spec("--alloc", str(1 << 30), limits=limits), runtime_dir)

    assert await _report(process, caplog, "alloc") == "alloc failed: MemoryError"


def test_resource_limits_refuse_non_positive_values() -> None:
    with pytest.raises(ValueError, match="open_files must be positive"):
        ResourceLimits(open_files=0)


async def test_plugin_process_sets_parent_death_signal(
    make_spec: MakeSpec, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    process = _process(make_spec("--report"), runtime_dir)

    assert await _report(process, caplog, "pdeathsig") == f"pdeathsig={int(signal.SIGKILL)}"


PROXY = """
import sys
from pathlib import Path

import trio
import trio._core._thread_cache as thread_cache
from prism.hosting.process import PluginProcess, PluginSpec
from prism.hosting.runtime_dirs import create

async def main():
    # Retire idle worker threads at once: PDEATHSIG fires when the *forking thread* exits.
    thread_cache.IDLE_TIMEOUT = 0.01
    command = [sys.executable, "-I", sys.argv[1], "--ignore-sigterm"]
    spec = PluginSpec("orphan", command)
    runtime = create("orphan", Path(sys.argv[2]))
    process = PluginProcess(spec, socket_path=runtime / "plugin-1.sock", runtime_dir=runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(process.run)
        for _ in range(3):
            await trio.to_thread.run_sync(lambda: None)
        await trio.sleep(0.5)
        print(process.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_plugin_process_dies_with_sigkilled_proxy_and_not_before(
    fake_plugin_path: Path, tmp_path: Path, runtime_dir: Path
) -> None:
    script = tmp_path / "proxy.py"
    script.write_text(PROXY)
    # The killed proxy cannot remove its runtime directory: put it where the fixture cleans up.
    proxy = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(fake_plugin_path), str(runtime_dir)],
        stdout=subprocess.PIPE,
    )
    assert proxy.stdout is not None
    try:
        with trio.fail_after(10):
            output = b""
            while not output.endswith(b"\n"):
                output += await proxy.stdout.receive_some()
        plugin = int(output)
        # It outlived the worker threads (and ignores stdin EOF and SIGTERM: only PDEATHSIG
        # can kill it below).
        assert not is_dead(plugin)

        proxy.kill()
        await proxy.wait()

        with trio.fail_after(2):
            await wait_until(lambda: is_dead(plugin))
    finally:
        proxy.kill()
        await proxy.wait()
