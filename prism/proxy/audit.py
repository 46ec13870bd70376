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

- a file, opened once when the proxy starts (created 0600, appended to), written through a
  64 KiB buffer: :meth:`AuditLog.record` appends to the buffer (no system call on the request
  path while it has room), and :meth:`AuditLog.run` flushes it every ``flush_interval``
  seconds and when the proxy stops. Measured (docs/user-guide.md, "Audit log"): ~8 µs of
  CPU per record, most of it building the JSON line; a ``write(2)`` per record adds ~2.5 µs
  and a logging FileHandler ~10 µs. A failed write
  (disk full) is counted in :attr:`AuditLog.dropped` and logged once per flush, never raised
  into a call. Log rotation: rotate with copy-and-truncate (the file stays open).
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
_BUFFER = 64 << 10

log = logging.getLogger(__name__)
_encode = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": ")).encode


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _name(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[:MAX_NAME] + "…"


def _status_name(status: Status | str) -> str:
    return status.name if isinstance(status, Status) else str(status)


class AuditLog:
    """The audit stage (module docstring). ``file`` None: the ``prism.audit`` logger."""

    def __init__(self, file: Path | None = None, *, flush_interval: float = 1.0) -> None:
        self.path = file
        self.flush_interval = flush_interval
        #: Records lost to failed writes.
        self.dropped = 0
        self._logger = logging.getLogger(AUDIT_LOGGER)
        self._file: io.BufferedWriter | None = None
        self._pending = 0  # records in the buffer since the last successful flush
        if file is not None:
            fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._file = io.BufferedWriter(io.FileIO(fd, "ab", closefd=True), _BUFFER)

    def _off(self) -> bool:
        return self._file is None and not self._logger.isEnabledFor(logging.INFO)

    def record(self, info: RequestInfo, outcome: CallOutcome) -> None:
        if self._off():
            return
        identity = info.identity
        trace = info.trace
        self._write(
            {
                "time": _now(),
                "kind": "call",
                "namespace": _name(info.namespace),
                "operation": _name(info.operation),
                "stream": info.stream,
                "subject": None if identity is None else identity.subject,
                "source": None if identity is None else identity.source,
                "status": outcome.status.name,
                "latency_ms": round(outcome.duration * 1000, 3),
                "trace_id": None if trace is None else trace.trace_id,
                "peer": info.peer.address,
            }
        )

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
        self._write(
            {
                "time": _now(),
                "kind": "admin",
                "action": _name(action),
                "target": _name(target),
                "subject": subject,
                "source": source,
                "status": _status_name(status),
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        line = _encode(record)
        file = self._file
        if file is None:
            self._logger.info(line)
            return
        try:
            file.write(line.encode() + b"\n")  # to the buffer; a full buffer writes through
            self._pending += 1
        except (OSError, ValueError):  # disk full; ValueError: closed (the proxy stopped)
            self.dropped += 1

    def flush(self) -> None:
        """Write the buffered records out (the writer task does this on its own)."""
        file = self._file
        if file is None or file.closed or not self._pending:
            return
        try:
            file.flush()
        except OSError as exc:
            self.dropped += self._pending
            log.warning(
                "audit log %s: %d records lost (%s)", self.path, self._pending, exc.strerror
            )
        self._pending = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush the file's buffer every ``flush_interval`` seconds until cancelled; then
        flush once more and close the file (cancellation ends it that way: nothing written
        before it is lost)."""
        task_status.started()
        if self._file is None:
            await trio.sleep_forever()
        try:
            while True:
                await trio.sleep(self.flush_interval)
                self.flush()
        finally:
            self.close()

    def close(self) -> None:
        file = self._file
        if file is not None and not file.closed:
            self.flush()
            with contextlib.suppress(OSError):  # counted by flush; nothing more to do
                file.close()
