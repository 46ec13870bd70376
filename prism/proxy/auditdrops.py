"""Audit records the audit log lost, made visible: a counter on ``/metrics`` and a warning in
the proxy's log, at most one per :data:`LOG_INTERVAL`.

The audit log (:mod:`prism.proxy.audit`) never makes a call wait for its record: a record that
does not fit its bounded queue, or that a failed write (disk full) lost, is counted in
``AuditLog.dropped`` and the call goes on. This module reads that count, off the request
path: ``prism_audit_records_dropped_total`` is the count at scrape time, and the reporter task
checks it every :data:`CHECK_INTERVAL` seconds and logs what it found, so the first loss is
seen within seconds and a log that loses records for hours writes one line a minute about it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

__all__ = ["CHECK_INTERVAL", "LOG_INTERVAL", "AuditDrops"]

log = logging.getLogger("prism.proxy.audit")

#: Seconds between two looks at the count.
CHECK_INTERVAL = 1.0
#: Seconds at least between two warnings.
LOG_INTERVAL = 60.0
METRIC = "prism_audit_records_dropped_total"


class Dropping(Protocol):
    @property
    def dropped(self) -> int: ...


class AuditDrops:
    """The counter (registered in ``registry`` here) and the reporter (:meth:`run`) of
    ``audit``'s lost records."""

    def __init__(self, audit: Dropping, registry: CollectorRegistry) -> None:
        self._audit = audit
        self._reported = 0
        self._logged_at = -float("inf")
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        family.add_metric([], float(self._audit.dropped))
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            METRIC,
            "Audit records lost: the audit log's queue was full, or its file could not be written.",
        )

    def check(self, now: float) -> None:
        """Log the records lost since the last warning, unless one was logged less than
        :data:`LOG_INTERVAL` seconds before ``now``."""
        dropped = self._audit.dropped
        if dropped <= self._reported or now - self._logged_at < LOG_INTERVAL:
            return
        log.warning(
            "audit log: %d records dropped since the last report (%d in all): its queue was "
            "full or its file could not be written; see %s",
            dropped - self._reported,
            dropped,
            METRIC,
        )
        self._reported, self._logged_at = dropped, now

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check every :data:`CHECK_INTERVAL` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(CHECK_INTERVAL)
            self.check(trio.current_time())
