"""The ``audit`` section: the audit log (one record per call), written by the request
pipeline's audit stage (``prism.proxy.assembly``). Nothing here is set yet: with nothing set,
no audit log is written.
"""

from __future__ import annotations

from prism.config._model import Model

__all__ = ["AuditConfig"]


class AuditConfig(Model):
    """The audit log."""
