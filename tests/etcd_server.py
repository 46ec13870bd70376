"""A real etcd (Debian's ``etcd-server``) as a local process: free loopback ports for its client
and peer URLs, a temporary data directory, stopped (and restartable on the same ports and data)
by the test harness, torn down even when a test fails."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class EtcdTLS:
    """TLS for etcd's client URL: ``server`` holds its key and certificate (for 127.0.0.1),
    signed by ``ca``; with ``client`` (a key and certificate in one PEM) etcd asks clients for
    a certificate signed by ``ca`` (``--client-cert-auth``), and the harness presents it."""

    ca: Path
    server: Path
    client: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.client is not None:
            ctx.load_cert_chain(self.client)
        return ctx


class EtcdServer:
    """``endpoint``: its client URL. :meth:`kill` and :meth:`start` again keep ports and data.
    ``host``: the address it listens on (another network namespace's, with ``netns``: etcd then
    runs in that namespace)."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: EtcdTLS | None = None,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.host = host
        self.netns = netns
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "http" if tls is None else "https"
        self.endpoint = f"{scheme}://{host}:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def _tls_args(self) -> Sequence[str]:
        if self.tls is None:
            return ()
        args = ["--cert-file", str(self.tls.server), "--key-file", str(self.tls.server)]
        if self.tls.client is not None:
            args += ["--client-cert-auth", "--trusted-ca-file", str(self.tls.ca)]
        return args

    @property
    def log(self) -> Path:
        return self.directory / "etcd.log"

    def start(self) -> None:
        peer = f"http://{self.host}:{self.peer_port}"
        prefix = [] if self.netns is None else ["ip", "netns", "exec", self.netns]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *prefix,
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
                    *self._tls_args(),
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
                context = None if self.tls is None else self.tls.context()
                with urllib.request.urlopen(
                    f"{self.endpoint}/health", timeout=2, context=context
                ) as answer:
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


#: The password of the ``prism`` user :func:`enable_auth` adds.
PASSWORD = "s3cret-etcd-pw"
ROOT_PASSWORD = "r00t-etcd-pw"


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def enable_auth(endpoint: str, prefix: str, *, context: ssl.SSLContext | None = None) -> None:
    """A root user, and ``prism`` (password :data:`PASSWORD`) with read-write on ``prefix``;
    then auth on: from here every call needs a token."""
    calls: list[tuple[str, dict[str, object]]] = [
        ("auth/user/add", {"name": "root", "password": ROOT_PASSWORD}),
        ("auth/user/grant", {"user": "root", "role": "root"}),
        ("auth/user/add", {"name": "prism", "password": PASSWORD}),
        ("auth/role/add", {"name": "fleet"}),
        (
            "auth/role/grant",
            {
                "name": "fleet",
                "perm": {
                    "permType": "READWRITE",
                    "key": _b64(prefix),
                    "range_end": _b64(_prefix_end(prefix)),
                },
            },
        ),
        ("auth/user/grant", {"user": "prism", "role": "fleet"}),
        ("auth/enable", {}),
    ]
    for path, body in calls:
        request = urllib.request.Request(
            f"{endpoint}/v3/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            assert answer.status == 200


def _prefix_end(prefix: str) -> bytes:
    raw = prefix.encode()
    return raw[:-1] + bytes([raw[-1] + 1])


@contextmanager
def etcd_server(
    *, tls: EtcdTLS | None = None, host: str = "127.0.0.1", netns: str | None = None
) -> Iterator[EtcdServer]:
    directory = Path(tempfile.mkdtemp(prefix="prism-etcd-test-"))
    server = EtcdServer(directory, tls=tls, host=host, netns=netns)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
