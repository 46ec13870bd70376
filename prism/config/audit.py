"""The ``audit`` section: the audit log (one JSON record per call, and per admin action),
written by the request pipeline's audit stage (``prism.proxy.audit``). Off by default."""

from __future__ import annotations

from prism.config._model import Model
from prism.config._types import ConfigPath, Flag, Seconds

__all__ = ["AuditConfig"]


class AuditConfig(Model):
    """The audit log."""

    enabled: Flag = False
    """Write one record per call to the front door's data API and per admin action."""
    file: ConfigPath | None = None
    """Append the records to this file (created 0600; an existing file keeps its mode and is
    appended to). None: the records go to the "prism.audit" logger, at INFO."""
    flush_interval: Seconds = 1.0
    """Seconds between writes of the queued records to the file (they are also written once
    1,024 wait, and when the proxy stops): how much a crash may lose."""
