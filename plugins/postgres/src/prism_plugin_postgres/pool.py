"""A fixed-size pool of authenticated connections.

``open()`` opens every connection at once, so each one authenticates (SCRAM, by libpq) before
the plugin serves anything and bad credentials fail ``Initialize``. Callers take a connection
for one batch (``async with pool.connection() as conn``), waiting in FIFO order while all are
busy. A connection found dead when taken (its session terminated, the server restarted) is
replaced by a new one — which authenticates again, so credentials that were revoked meanwhile
fail that call with UNAUTHENTICATED — and a connection that broke during a call is closed and
replaced on the next.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import trio
from psycopg import pq
from psycopg.conninfo import make_conninfo

from prism.sdk import GrpcError, Metrics, Unavailable, slots
from prism_plugin_postgres.connection import PgConnection, Statement
from prism_plugin_postgres.errors import ConnectionLost, connect_error, is_retryable_loss

__all__ = ["Lease", "Pool", "Settings"]

_FATAL = pq.ExecStatus.FATAL_ERROR

#: Every connection's session: values come back as values.py reads them, whatever the
#: server's defaults.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,MDY -c bytea_output=hex -c IntervalStyle=postgres"
)


@dataclass(frozen=True)
class Settings:
    """Where and how to connect (the config and credentials, checked)."""

    host: str
    port: int
    database: str
    user: str
    password: str
    application_name: str
    connect_timeout: float  # seconds
    statement_timeout_ms: int
    require_auth: str
    tls_mode: str
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def server(self) -> str:
        return self.host if self.host.startswith("/") else f"{self.host}:{self.port}"

    def conninfo(self, addresses: list[str]) -> str:
        options = f"{SESSION_OPTIONS} -c statement_timeout={self.statement_timeout_ms}"
        params: dict[str, object] = {
            "host": ",".join([self.host] * max(1, len(addresses))),
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "password": self.password,
            "application_name": self.application_name,
            "client_encoding": "UTF8",
            "options": options,
            "sslmode": self.tls_mode,
            "require_auth": self.require_auth,
            # libpq's own bound (whole seconds, at least 2); the pool's trio deadline is exact.
            "connect_timeout": max(2, int(self.connect_timeout + 0.999)),
        }
        if addresses:
            params["hostaddr"] = ",".join(addresses)
        for key, value in (
            ("sslrootcert", self.tls_ca_file),
            ("sslcert", self.tls_cert_file),
            ("sslkey", self.tls_key_file),
        ):
            if value:
                params[key] = value
        return make_conninfo(**params)  # type: ignore[arg-type]


async def _addresses(host: str, port: int) -> list[str]:
    """The host's addresses, resolved on Trio (libpq would block the event loop on DNS);
    [] for a Unix socket directory or an address already."""
    if host.startswith("/"):
        return []
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return []
    try:
        found = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unavailable(f"cannot resolve PostgreSQL host {host!r}: {exc.strerror}") from None
    return list(dict.fromkeys(str(entry[4][0]) for entry in found))


class Pool:
    def __init__(
        self,
        settings: Settings,
        size: int,
        cache_size: int,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.size = size
        self._cache_size = cache_size
        self._metrics = metrics
        self._idle: list[PgConnection] = []
        self._open = 0
        self._slots = trio.Semaphore(size)
        self._closed = False

    def _lookup(self, hit: bool) -> None:
        if hit:
            self._metrics.cache_hit()
        else:
            self._metrics.cache_miss()

    def _count(self, delta: int) -> None:
        self._open += delta
        self._metrics.connections_active = self._open

    async def connect(self) -> PgConnection:
        """One new connection (authenticated), bounded by ``connect_timeout``; errors are
        statuses (UNAUTHENTICATED, UNAVAILABLE, ...)."""
        settings = self.settings
        with trio.move_on_after(settings.connect_timeout) as scope:
            addresses = await _addresses(settings.host, settings.port)
            try:
                connection = await PgConnection.open(
                    settings.conninfo(addresses), self._cache_size, self._lookup
                )
            except psycopg.Error as exc:
                raise connect_error(exc, settings.server, settings.user) from None
        if scope.cancelled_caught:
            raise Unavailable(
                f"cannot connect to PostgreSQL at {settings.server}: no answer within "
                f"{settings.connect_timeout:g} s (config.connect_timeout_ms)"
            )
        self._count(+1)
        return connection

    async def open(self) -> None:
        """Open all ``size`` connections; the first failure fails the whole (what was opened
        is closed)."""
        opened: list[PgConnection] = []
        failures: list[GrpcError] = []

        async def one() -> None:
            try:
                opened.append(await self.connect())
            except GrpcError as error:
                failures.append(error)

        async with trio.open_nursery() as nursery:
            for _ in range(self.size):
                nursery.start_soon(one)
        if failures:
            for connection in opened:
                self._release_closed(connection)
            raise failures[0]
        self._idle.extend(opened)

    def _release_closed(self, connection: PgConnection) -> None:
        connection.close()
        self._count(-1)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Lease]:
        """A connection for one call (``lease.run(...)`` as many batches as the call needs).
        Waits (FIFO) while all are busy; cancellation while waiting takes none."""
        await slots.take(self._slots)
        try:
            if self._closed:
                raise Unavailable("the plugin is shutting down")
            connection = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.alive():
                    connection = candidate
                    break
                self._release_closed(candidate)
            lease = Lease(self, connection or await self.connect())
            try:
                yield lease
            finally:
                if lease.connection.usable and not self._closed:
                    self._idle.append(lease.connection)
                else:
                    self._release_closed(lease.connection)
        finally:
            self._slots.release()

    def discard(self, connection: PgConnection) -> None:
        """Close a connection ``connect()`` gave that is not the pool's (the listener's)."""
        self._release_closed(connection)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._release_closed(self._idle.pop())

    @property
    def open_connections(self) -> int:
        return self._open


class Lease:
    """A connection taken from the pool for one call."""

    def __init__(self, pool: Pool, connection: PgConnection) -> None:
        self.pool = pool
        self.connection = connection
        self._batches = 0

    async def run(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """One batch (see ``PgConnection.run``). When the server ended the session before the
        call's first batch ran (a terminated session, a restart: SQLSTATE 57P01-57P03), it is
        run once more on a new connection, which authenticates anew. A connection lost
        mid-batch is UNAVAILABLE: whether the batch took effect is unknown."""
        first = self._batches == 0
        self._batches += 1
        try:
            results = await self._run(statements)
        except ConnectionLost as lost:
            if not (first and lost.session_ended):
                raise self._unavailable() from None
            results = await self._again(statements)
        else:
            if any(r.status == _FATAL and is_retryable_loss(r) for r in results):
                self.connection.close()
                if first:
                    results = await self._again(statements)
        return results

    async def _again(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        old = self.connection
        old.close()
        self.connection = await self.pool.connect()  # if this fails, the old one is released
        self.pool._release_closed(old)
        try:
            return await self._run(statements)
        except ConnectionLost:
            raise self._unavailable() from None

    def _unavailable(self) -> Unavailable:
        return Unavailable(
            f"the connection to PostgreSQL at {self.pool.settings.server} was lost during the "
            "call; whether it took effect is unknown"
        )

    async def _run(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        return await self.connection.run(statements)
