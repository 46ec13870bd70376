"""A real ``redis-server`` (Debian's) as a local process on a loopback port of its own, with a
temporary directory: killed (SIGKILL), paused (SIGSTOP) and started again on the same port by the
test, torn down even when the test fails. The fleet limits' tests use it (their Redis must come
back where the proxies look for it; the acceptance framework's ``RedisServer`` picks a new port
at each start)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from etcd_server import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent / "acceptance"))

from backends import sigstop

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    """``address``: host:port. :meth:`kill` then :meth:`start` keep the port."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        command = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        if self.password is not None:
            command += ["--requirepass", self.password]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 30
        while not self._answers():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "redis did not start: " + self.log.read_text()
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    async def pause(self) -> None:
        """SIGSTOP, once every thread is stopped (the acceptance framework's ``sigstop``)."""
        assert self.process is not None
        await sigstop(self.process.pid)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@contextmanager
def redis_process(password: str | None = None) -> Iterator[RedisProcess]:
    directory = Path(tempfile.mkdtemp(prefix="prism-redis-test-"))
    server = RedisProcess(directory, password)
    try:
        server.start()
        yield server
    finally:
        if server.process is not None:
            server.resume()
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
