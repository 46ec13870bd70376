"""The ``prism`` command's own options and errors, as a user meets them: the installed command
in a subprocess."""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).with_name("prism")
PRISM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prism.cli.main"]


def prism(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRISM, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def handles_sigterm(pid: int) -> bool:
    """The process has installed its own SIGTERM handler (``prism serve`` does once it runs):
    from then on SIGTERM is a graceful stop, not the default instant death."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@contextmanager
def serving(*args: str, directory: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``prism ARGS`` with ``--listen`` on a free port, until that port accepts and SIGTERM
    would stop it gracefully; SIGTERM after."""
    port = free_port()
    log = directory / "prism.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*PRISM, *args, "--listen", f"127.0.0.1:{port}", "--admin", "off"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    try:
        deadline = time.monotonic() + 30
        while not (accepts(port) and handles_sigterm(proc.pid)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prism did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.05)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()


def test_cli_version_prints_the_installed_version() -> None:
    done = prism("--version")

    assert done.returncode == 0
    assert done.stdout == f"prism {importlib.metadata.version('prism-proxy')}\n"


def test_cli_help_lists_version_and_log_levels() -> None:
    done = prism("--help")

    assert done.returncode == 0
    assert "--version" in done.stdout
    assert "--log-level {debug,info,warning,error,critical}" in done.stdout
    assert "--log-level" in prism("serve", "--help").stdout


@pytest.mark.parametrize(
    "args",
    [("--log-level", "loud", "serve"), ("serve", "--log-level", "loud")],
    ids=["before", "after"],
)
def test_cli_log_level_refuses_unknown_level_in_one_line(args: tuple[str, ...]) -> None:
    done = prism(*args)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].endswith(
        "error: argument --log-level: invalid choice: 'loud' "
        "(choose from 'debug', 'info', 'warning', 'error', 'critical')"
    )


def test_cli_log_level_applies_before_and_after_the_subcommand(tmp_path: Path) -> None:
    with serving("--log-level", "WARNING", "serve", directory=tmp_path) as (_, _, log):
        pass
    assert "prism listening" not in log.read_text()  # INFO, below the level

    config = tmp_path / "prism.yaml"
    config.write_text("namespaces:\n  - name: kv\n    plugin: {name: memstore, mode: sidecar}\n")
    with serving("serve", "--config", str(config), "--log-level", "debug", directory=tmp_path) as (
        _,
        _,
        log,
    ):
        pass
    text = log.read_text()
    assert "prism listening" in text
    assert "plugin kv started as pid" in text  # a DEBUG record


def test_cli_serve_names_the_address_it_cannot_listen_on(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = prism(
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            "off",
            "--data-dir",
            str(tmp_path / "data"),
            cwd=tmp_path,
        )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"prism: cannot listen on 127.0.0.1:{port} (listen): Address already in use"
    )
