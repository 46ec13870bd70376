"""The ``logging`` section: the proxy's own logs (format, level). Nothing here is set yet:
with nothing set, the proxy logs as it always did.
"""

from __future__ import annotations

from prism.config._model import Model

__all__ = ["LoggingConfig"]


class LoggingConfig(Model):
    """The proxy's own logs."""
