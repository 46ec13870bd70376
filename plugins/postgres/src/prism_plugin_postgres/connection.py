"""One PostgreSQL connection on Trio: libpq (through psycopg's ``pq``) in pipeline mode, driven
by the Trio wait functions in ``wait.py``.

Every call is one batch: the statements are queued (Parse for those not yet prepared on this
connection, Bind/Execute for all), then one Sync, then one flush — one round trip however many
statements. PostgreSQL runs the statements before a Sync as one implicit transaction unless the
batch opened one itself (``BEGIN``): all of them take effect or, when one fails, none does.

Prepared statements: each connection keeps the statements it prepared, by text and parameter
types, least recently used evicted past ``cache_size`` (closed on the server in the same batch);
every lookup is reported as a cache hit or miss (the plugin's metrics).

Cancellation: a call cancelled while the server works (the caller's deadline, a client gone)
sends PostgreSQL a cancel request for the running statement, then reads the batch's results
until its Sync so the connection is clean again — shielded, within ``CANCEL_GRACE`` seconds;
when that does not work out the connection is closed (the server then rolls back).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import trio
from psycopg import generators, pq

from prism_plugin_postgres.errors import ConnectionLost, is_retryable_loss
from prism_plugin_postgres.values import Param
from prism_plugin_postgres.wait import readable_now, wait, wait_conn

__all__ = ["CANCEL_GRACE", "PgConnection", "Statement"]

CANCEL_GRACE = 5.0  # seconds: a cancelled call's cleanup; past it the connection is closed

_OK = pq.ConnStatus.OK
_IDLE = pq.TransactionStatus.IDLE
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL = pq.ExecStatus.FATAL_ERROR
_COMMAND_OK = pq.ExecStatus.COMMAND_OK

_Key = tuple[bytes, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Statement:
    sql: bytes
    params: Sequence[Param] = ()
    binary: bool = False  # results in binary format (the plugin's own statements)


class PgConnection:
    """See the module docstring. Not safe for two tasks at once: the pool hands it to one."""

    def __init__(
        self, pgconn: pq.abc.PGconn, cache_size: int, on_lookup: Callable[[bool], None]
    ) -> None:
        self.pgconn = pgconn
        self._cache: collections.OrderedDict[_Key, bytes] = collections.OrderedDict()
        self._queued = 0
        self._cache_size = cache_size
        self._on_lookup = on_lookup
        self._names = itertools.count(1)
        self._broken = False
        self._session_ended = False
        pgconn.notice_handler = self._notice
        pgconn.enter_pipeline_mode()

    @classmethod
    async def open(
        cls, conninfo: str, cache_size: int, on_lookup: Callable[[bool], None]
    ) -> PgConnection:
        """Connect (and authenticate). Raises ``psycopg.OperationalError`` as libpq reports the
        failure; cancellation abandons the attempt (the half-open connection is closed)."""
        gen = generators.connect(conninfo)
        try:
            pgconn = await wait_conn(gen)
        finally:
            gen.close()
        return cls(pgconn, cache_size, on_lookup)

    def _notice(self, result: pq.abc.PGresult) -> None:
        # An error while idle reaches libpq's notice processor: a terminated session's FATAL.
        severity = result.error_field(pq.DiagnosticField.SEVERITY_NONLOCALIZED)
        if severity in (b"FATAL", b"PANIC"):
            self._session_ended = True
            self._broken = True

    @property
    def usable(self) -> bool:
        return not self._broken and self.pgconn.status == _OK

    @property
    def in_transaction(self) -> bool:
        return self.pgconn.transaction_status != _IDLE

    def alive(self) -> bool:
        """Whether the idle connection still works: reads what the server sent meanwhile (a
        terminated session's FATAL error, then end-of-file) without waiting."""
        if not self.usable:
            return False
        try:
            for _ in range(8):  # notices or notifications at most; then it is known
                if not readable_now(self.pgconn.socket):
                    break
                self.pgconn.consume_input()
                self.pgconn.notifies()  # parses what arrived: a FATAL goes to _notice
        except psycopg.OperationalError:
            self._broken = True
        return self.usable

    def close(self) -> None:
        self._broken = True
        with contextlib.suppress(Exception):
            self.pgconn.finish()

    # -- a batch -------------------------------------------------------------------------------

    def _queue(self, statement: Statement, parses: list[tuple[int, _Key]]) -> int:
        """Queue ``statement``; returns how many commands (results) it added, its own last.
        ``parses`` gets (command index, cache key) of each Parse queued."""
        pg = self.pgconn
        types = tuple(p[1] for p in statement.params)
        key = (statement.sql, types)
        name = self._cache.get(key)
        commands = 1
        if name is None:
            self._on_lookup(False)
            name = b"prism_%d" % next(self._names)
            pg.send_prepare(name, statement.sql, types)
            parses.append((self._queued, key))
            self._cache[key] = name
            commands += 1
            if len(self._cache) > self._cache_size:
                _, evicted = self._cache.popitem(last=False)
                pg.send_close_prepared(evicted)
                commands += 1
        else:
            self._on_lookup(True)
            self._cache.move_to_end(key)
        pg.send_query_prepared(
            name,
            [p[0] for p in statement.params],
            [p[2] for p in statement.params],
            1 if statement.binary else 0,
        )
        self._queued += commands
        return commands

    async def run(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """Run ``statements`` as one batch; one result per statement (TUPLES_OK, COMMAND_OK,
        FATAL_ERROR for the one that failed, PIPELINE_ABORTED for those after it).

        Raises ``ConnectionLost`` when the connection breaks. Cancellation cancels the running
        statement on the server (see the module docstring) and re-raises."""
        if not self.usable:
            raise ConnectionLost("the connection is closed")
        parses: list[tuple[int, _Key]] = []
        shape: list[int] = []
        self._queued = 0
        results: list[pq.abc.PGresult] = []
        try:
            try:
                for statement in statements:
                    shape.append(self._queue(statement, parses))
                self.pgconn.pipeline_sync()
                await self._collect(self._queued, results)
            except trio.Cancelled:
                await self._abandon()
                raise
            except (psycopg.Error, OSError, ConnectionLost) as exc:
                self._broken = True
                lost = (
                    exc if isinstance(exc, ConnectionLost) else ConnectionLost.from_text(str(exc))
                )
                lost.session_ended |= self._session_ended or any(
                    r.status == _FATAL and is_retryable_loss(r) for r in results
                )
                raise lost from None
        finally:
            # A statement whose Parse did not succeed is not prepared: forget it (it is
            # prepared again on next use). After a failed batch that is all of them.
            for index, key in parses:
                if index >= len(results) or results[index].status != _COMMAND_OK:
                    self._cache.pop(key, None)
        # Each statement's own result is its last command's; when its Parse failed, that
        # Parse's error is the one to report (the Execute after it was only aborted).
        out: list[pq.abc.PGresult] = []
        index = 0
        for count in shape:
            own = results[index : index + count]
            index += count
            out.append(next((r for r in own if r.status == _FATAL), own[-1]))
        return out

    async def _collect(self, commands: int, results: list[pq.abc.PGresult]) -> None:
        """Flush, then read the results of ``commands`` commands and the Sync into
        ``results``."""
        pg = self.pgconn
        fileno = pg.socket
        await wait(generators.send(pg), fileno)
        while True:
            batch = await wait(generators.fetch_many(pg), fileno)
            if not batch:
                if pg.status != _OK:
                    self._broken = True
                    raise ConnectionLost.from_text(pg.get_error_message())
                continue
            if batch[0].status == _SYNC:
                break
            results.append(batch[-1])
        if len(results) != commands:
            self._broken = True
            raise ConnectionLost(f"{len(results)} results for {commands} commands")

    async def _abandon(self) -> None:
        """After a cancelled wait: cancel the statement on the server, then read to the Sync."""
        with trio.move_on_after(CANCEL_GRACE) as scope:
            scope.shield = True
            try:
                await self._cancel_on_server()
                await self._drain()
                if self.in_transaction:
                    results = await self._rollback()
                    if any(r.status == _FATAL for r in results):
                        self._broken = True
            except (psycopg.Error, OSError, ConnectionLost):
                self._broken = True
        if scope.cancelled_caught or not self.usable:
            self.close()

    async def _cancel_on_server(self) -> None:
        try:
            cancel = self.pgconn.cancel_conn()
        except psycopg.NotSupportedError:  # a libpq older than 17: the blocking cancel
            blocking = self.pgconn.get_cancel()
            await trio.to_thread.run_sync(blocking.cancel, abandon_on_cancel=True)
            return
        try:
            cancel.start()
            await wait_conn(generators.cancel(cancel))
        finally:
            cancel.finish()

    async def _drain(self) -> None:
        pg = self.pgconn
        await wait(generators.send(pg), pg.socket)
        while True:
            batch = await wait(generators.fetch_many(pg), pg.socket)
            if batch and batch[0].status == _SYNC:
                return
            if not batch and pg.status != _OK:
                raise ConnectionLost("the server closed the connection")

    async def _rollback(self) -> list[pq.abc.PGresult]:
        self.pgconn.send_query_params(b"ROLLBACK", None)
        self.pgconn.pipeline_sync()
        results: list[pq.abc.PGresult] = []
        await self._collect(1, results)
        return results

    async def rollback(self) -> None:
        """End a transaction a batch left open (``BEGIN`` without ``COMMIT``)."""
        try:
            results = await self._rollback()
        except (psycopg.Error, OSError) as exc:
            self._broken = True
            raise ConnectionLost(str(exc)) from None
        if any(r.status == _FATAL for r in results) or self.in_transaction:
            self._broken = True
