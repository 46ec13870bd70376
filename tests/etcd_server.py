"""A real etcd (Debian's ``etcd-server``) as a local process: free loopback ports for its client
and peer URLs, a temporary data directory, stopped (and restartable on the same ports and data)
by the test harness, torn down even when a test fails."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EtcdServer:
    """``endpoint``: its client URL. :meth:`kill` and :meth:`start` again keep ports and data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "etcd.log"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    ETCD,
                    "--name",
                    "test",
                    "--data-dir",
                    str(self.directory / "data"),
                    "--listen-client-urls",
                    self.endpoint,
                    "--advertise-client-urls",
                    self.endpoint,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    f"test={peer}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                "etcd did not start: " + self.log.read_text()[-3000:]
            )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=2) as answer:
                    if b'"true"' in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    directory = Path(tempfile.mkdtemp(prefix="prism-etcd-test-"))
    server = EtcdServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
