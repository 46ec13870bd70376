"""``prism serve`` as a user runs it: its own process, the embedded default config (namespaces
``kv`` on memstore and ``durable`` on SQLite), a free loopback port, stopped after the block."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def prism_serve(directory: Path, port: int | None = None) -> Iterator[str]:
    """Runs ``prism serve --listen 127.0.0.1:PORT`` in ``directory`` until the block ends;
    yields ``"127.0.0.1:PORT"`` once it listens."""
    port = port or free_port()
    log = directory / "prism.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prism.cli.main",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin",
                "off",
                "--data-dir",
                str(directory / "data"),
            ],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        deadline = time.monotonic() + 30
        while "prism listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "prism serve did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
