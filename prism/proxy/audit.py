"""The audit log: one JSON record per call to the data API, and one per admin action.

A call's record (one line, keys in this order)::

    {"time": "2026-12-02T01:02:03.456Z", "kind": "call", "namespace": "kv",
     "operation": "get", "stream": false, "subject": "alice", "source": "jwt",
     "status": "OK", "latency_ms": 0.412, "trace_id": "4bf9...", "peer": "127.0.0.1:50412"}

An admin action's: ``{"time", "kind": "admin", "action", "target", "subject", "source",
"status"}``. Records hold who called what and how it ended, never credentials, tokens,
metadata values, status messages (a plugin's message may quote a key) or payloads: every
value comes from :class:`RequestInfo` and the status code. Client-chosen names (namespace,
operation) are cut to :data:`MAX_NAME` characters. ``subject`` and ``source`` are null for a
call refused before it was authenticated; ``namespace`` and ``operation`` are "" for one that
ended before the front door read them.

Where they go (``audit.file``):

- a file, opened once when the proxy starts (created 0600, appended to). The request path
  only queues what the record needs (:meth:`AuditLog.record`: a tuple of values the call
  already has, and the wall-clock time); the writer task (:meth:`AuditLog.run`) turns the
  queue into JSON lines and writes them every ``flush_interval`` seconds, as soon as
  :data:`WAKE_AT` records wait, and when the proxy stops. The queue is bounded
  (:data:`MAX_QUEUE` records): beyond it a record is dropped, never waited for. Lines are
  written by hand (every string through the JSON encoder's own escaping) with the second's
  timestamp prefix formatted once per second: ~2 µs a record, against ~8 µs for a
  ``json`` encode and ``datetime.isoformat`` per record. A record dropped, or lost to a failed
  write (disk full), is counted in :attr:`AuditLog.dropped` (and a failed write logged once
  per flush), never raised into a call. Log rotation: rotate with copy-and-truncate (the
  file stays open).
- the ``prism.audit`` logger, at INFO, with the record as the message: the application's
  logging configuration decides where it goes (its handlers run synchronously).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from prism.grpc.interceptor import CallOutcome
from prism.grpc.wire.status import Status
from prism.proxy.request import Identity, RequestInfo

__all__ = ["AUDIT_LOGGER", "MAX_NAME", "AuditLog"]

AUDIT_LOGGER = "prism.audit"
#: Longest namespace or operation name written as it came (longer ones are cut, with "…").
MAX_NAME = 200
#: Records waiting for the writer at most (a file's; ~100 bytes each while queued): beyond,
#: records are dropped (counted) rather than held up or grown without bound.
MAX_QUEUE = 1 << 16
#: Records waiting that wake the writer before its flush interval is over.
WAKE_AT = 1024
#: Records turned into lines between two checkpoints of the writer (other tasks run between).
_BATCH = 256
_BUFFER = 64 << 10

log = logging.getLogger(__name__)
_encode = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": ")).encode
_string = json.encoder.encode_basestring_ascii


def _name(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[:MAX_NAME] + "…"


def _status_name(status: Status | str) -> str:
    return status.name if isinstance(status, Status) else str(status)


class AuditLog:
    """The audit stage (module docstring). ``file`` None: the ``prism.audit`` logger."""

    def __init__(self, file: Path | None = None, *, flush_interval: float = 1.0) -> None:
        self.path = file
        self.flush_interval = flush_interval
        #: Records lost: dropped with the queue full, or to failed writes.
        self.dropped = 0
        self._logger = logging.getLogger(AUDIT_LOGGER)
        self._file: io.BufferedWriter | None = None
        self._pending = 0  # records in the buffer since the last successful flush
        # A call's values (a tuple), or an admin action's line (a str), in order.
        self._queue: list[tuple[Any, ...] | str] = []
        self._wake = trio.Event()
        self._second = -1  # the second _prefix is for
        self._prefix = ""
        if file is not None:
            fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._file = io.BufferedWriter(io.FileIO(fd, "ab", closefd=True), _BUFFER)

    def _off(self) -> bool:
        return self._file is None and not self._logger.isEnabledFor(logging.INFO)

    def record(self, info: RequestInfo, outcome: CallOutcome) -> None:
        file = self._file
        if file is None:
            if self._logger.isEnabledFor(logging.INFO):
                self._logger.info(self._call_line(self._values(info, outcome)))
            return
        queue = self._queue
        if len(queue) >= MAX_QUEUE or file.closed:
            self.dropped += 1
            return
        queue.append(self._values(info, outcome))
        if len(queue) == WAKE_AT:
            self._wake.set()

    @staticmethod
    def _values(info: RequestInfo, outcome: CallOutcome) -> tuple[Any, ...]:
        trace = info.trace
        return (
            time.time(),
            info.namespace,
            info.operation,
            info.stream,
            info.identity,
            outcome.status,
            outcome.duration,
            None if trace is None else trace.trace_id,
            info.peer.address,
        )

    def _call_line(self, values: tuple[Any, ...]) -> str:
        stamp, namespace, operation, stream, identity, status, duration, trace_id, peer = values
        if identity is None:
            who = '"subject": null, "source": null'
        else:
            who = f'"subject": {_string(identity.subject)}, "source": "{identity.source}"'
        trace = "null" if trace_id is None else f'"{trace_id}"'
        return (
            f'{{"time": "{self._time(stamp)}", "kind": "call", '
            f'"namespace": {_string(_name(namespace))}, '
            f'"operation": {_string(_name(operation))}, '
            f'"stream": {"true" if stream else "false"}, {who}, "status": "{status.name}", '
            f'"latency_ms": {round(duration * 1000, 3)!r}, "trace_id": {trace}, '
            f'"peer": {_string(peer)}}}'
        )

    def _time(self, stamp: float) -> str:
        """``stamp`` as ``2026-12-02T01:02:03.456Z``; the second's part formatted once."""
        second = int(stamp)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((stamp - second) * 1000):03d}Z"

    def record_admin(
        self, action: str, target: str, caller: Identity | str | None, status: Status | str
    ) -> None:
        """An admin action: ``action`` ("reload", "disable", "config.reload"), its
        ``target`` (a namespace, "" for the whole proxy), who asked (an Identity, a name, or
        None when unknown) and how it ended (a Status or its name). Never pass secrets in
        any of them. Must not raise, does not block."""
        if self._off():
            return
        if isinstance(caller, Identity):
            subject: str | None = caller.subject
            source: str | None = caller.source
        else:
            subject, source = caller, None
        line = _encode(
            {
                "time": self._time(time.time()),
                "kind": "admin",
                "action": _name(action),
                "target": _name(target),
                "subject": subject,
                "source": source,
                "status": _status_name(status),
            }
        )
        file = self._file
        if file is None:
            self._logger.info(line)
        elif len(self._queue) >= MAX_QUEUE or file.closed:
            self.dropped += 1
        else:
            self._queue.append(line)

    def _write(self, limit: int | None = None) -> None:
        """Up to ``limit`` queued records (all: None) as lines, into the file's buffer."""
        file = self._file
        queue = self._queue
        if file is None or not queue:
            return
        if limit is None or limit >= len(queue):
            batch, self._queue = queue, []
        else:
            batch, self._queue = queue[:limit], queue[limit:]
        lines = [item if isinstance(item, str) else self._call_line(item) for item in batch]
        try:
            file.write(("\n".join(lines) + "\n").encode())  # a full buffer writes through
            self._pending += len(lines)
        except (OSError, ValueError):  # disk full; ValueError: closed (the proxy stopped)
            self.dropped += len(lines)

    def flush(self) -> None:
        """Write the queued and buffered records out (the writer task does this on its own)."""
        self._write()
        file = self._file
        if file is None or file.closed or not self._pending:
            return
        try:
            file.flush()
        except OSError as exc:
            self.dropped += self._pending
            # DEBUG: prism.proxy.auditdrops reports losses at WARNING, at most once a minute.
            log.debug("audit log %s: %d records lost (%s)", self.path, self._pending, exc.strerror)
        self._pending = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the queued records out every ``flush_interval`` seconds, and whenever
        :data:`WAKE_AT` wait, until cancelled; then write what is left and close the file
        (cancellation ends it that way: nothing recorded before it is lost)."""
        task_status.started()
        if self._file is None:
            await trio.sleep_forever()
        try:
            while True:
                with trio.move_on_after(self.flush_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                while len(self._queue) > _BATCH:  # a long queue in slices: calls go on
                    self._write(_BATCH)
                    await trio.lowlevel.checkpoint()
                self.flush()
        finally:
            self.close()

    def close(self) -> None:
        file = self._file
        if file is not None and not file.closed:
            self.flush()
            with contextlib.suppress(OSError):  # counted by flush; nothing more to do
                file.close()
