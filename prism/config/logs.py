"""The ``logging`` section: the proxy's own logs (their format and level), set up by
``prism serve`` (:mod:`prism.logsetup`). An application embedding the proxy keeps its own
logging setup: it can install :func:`prism.logsetup.configure` itself.
"""

from __future__ import annotations

from typing import Literal

from prism.config._model import Model

__all__ = ["LogFormat", "LogLevel", "LoggingConfig"]

#: ``json``: one JSON object per line; ``text``: human-readable lines; ``auto``: JSON unless
#: stderr is a terminal.
LogFormat = Literal["auto", "json", "text"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class LoggingConfig(Model):
    """The proxy's own logs."""

    format: LogFormat = "auto"
    """``json`` (one object per line), ``text``, or ``auto``: JSON unless stderr is a terminal.
    ``prism serve --log-format`` overrides it."""
    level: LogLevel = "info"
    """The lowest level written. ``prism serve --log-level`` overrides it."""
