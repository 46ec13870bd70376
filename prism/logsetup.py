"""Log records as operators read them: JSON lines (one object per line) or text, each record
carrying the namespace, plugin and trace id of what it is about.

Where a record comes from decides its fields, through :data:`LOG_CONTEXT`, a context variable
(Trio copies the context into every task it starts, so a value set in a task holds for it and
its children, never for its siblings):

- the request pipeline sets it for each client call to the call's
  :class:`~prism.proxy.request.RequestInfo`, whose namespace and trace id are read when a record
  is written (the namespace is known only once the request's envelope is read);
- the plugin host sets it for each plugin instance's tasks (supervision, health checks, a
  sidecar's log forwarding) to the namespace and plugin;
- a sidecar's own JSON lines are parsed by the proxy (:func:`parse_plugin_line`) into records
  of the logger ``prism.plugin.<namespace>``; the namespace and plugin fields are the proxy's,
  never the line's (a plugin cannot speak for another namespace).

:func:`configure` installs the handler (``prism serve``, the sidecar launcher); the
:class:`ContextFilter` on it stamps the fields onto every record it writes, so loggers need
nothing special: ``logging.getLogger(__name__).info(...)`` is enough.

Hand-written rather than a dependency (python-json-logger, structlog): a formatter and a
filter over the standard library's ``logging`` and ``json`` are about fifty lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_CONTEXT",
    "ContextFilter",
    "Fields",
    "JsonFormatter",
    "LogContext",
    "PluginLine",
    "TextFormatter",
    "TraceparentFields",
    "configure",
    "current_trace_id",
    "parse_plugin_line",
]

#: The fields a context gives records, in the order text lines show them.
CONTEXT_FIELDS = ("namespace", "plugin", "trace_id", "span_id")


class LogContext(Protocol):
    def log_fields(self) -> Mapping[str, str]:
        """The fields records get now (empty values are left out)."""
        ...


@dataclass(frozen=True, slots=True)
class Fields:
    """A fixed set of fields: ``LOG_CONTEXT.set(Fields({"namespace": "kv"}))``."""

    fields: Mapping[str, str]

    def log_fields(self) -> Mapping[str, str]:
        return self.fields


class TraceparentFields:
    """The trace id and span id of a W3C ``traceparent`` (a plugin's call context: the
    proxy's span is the parent of the plugin's work), read only when a record is written."""

    __slots__ = ("traceparent",)

    def __init__(self, traceparent: str) -> None:
        self.traceparent = traceparent

    def log_fields(self) -> Mapping[str, str]:
        parts = self.traceparent.split("-")
        if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
            return {}
        return {"trace_id": parts[1], "span_id": parts[2]}


LOG_CONTEXT: ContextVar[LogContext | None] = ContextVar("prism.log_context", default=None)


def current_trace_id() -> str | None:
    """The W3C trace id of the call this task serves (its :data:`LOG_CONTEXT`), if any: the id
    an internal error is reported under, so the client's message and the log lines share it."""
    context = LOG_CONTEXT.get()
    if context is None:
        return None
    return context.log_fields().get("trace_id") or None


# Every attribute a plain LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class ContextFilter(logging.Filter):
    """Stamps :data:`LOG_CONTEXT`'s fields onto each record (fields given with ``extra=`` win).
    A handler's filter runs in the logging call's own context, so it sees the caller's."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = LOG_CONTEXT.get()
        if context is not None:
            found = record.__dict__
            for name, value in context.log_fields().items():
                if value and name not in found:
                    found[name] = value
        return True


def _iso(created: float) -> str:
    seconds = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int((created - seconds) * 1000):03d}Z"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then the context fields and anything given with ``extra=``, then
    ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message [namespace=kv plugin=memstore trace_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        found = record.__dict__
        fields = [f"{name}={found[name]}" for name in CONTEXT_FIELDS if found.get(name)]
        return f"{line} [{' '.join(fields)}]" if fields else line


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def configure(
    format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr) in ``format`` (``json``, ``text``, or ``auto``: JSON unless
    the stream is a terminal) from ``level`` up, replacing the handler an earlier call
    installed (other handlers stay: an application's, pytest's). Returns the handler."""
    stream = sys.stderr if stream is None else stream
    as_json = format == "json" or (format == "auto" and not _is_terminal(stream))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.set_name("prism")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "prism":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


# -- a sidecar's lines, as the proxy reads them ------------------------------------------------

_LEVELS = logging.getLevelNamesMapping()
#: What a line may add to the proxy's record besides level, logger and message: never the
#: namespace or plugin, which only the proxy knows for sure.
_FORWARDED = {"trace_id": 32, "span_id": 16, "exception": 16 << 10}


@dataclass(frozen=True, slots=True)
class PluginLine:
    """One JSON line of a plugin's output, as :func:`parse_plugin_line` reads it."""

    level: int | None  # None: the line named no level the proxy knows
    logger: str
    message: str
    fields: Mapping[str, str]


def parse_plugin_line(text: str) -> PluginLine | None:
    """A line a plugin wrote with :class:`JsonFormatter`, or None for any other line (the
    caller forwards it as the message). Only ``level``, ``logger``, ``message``, ``trace_id``,
    ``span_id`` and ``exception`` are taken, each as text and bounded in length."""
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:  # a line cut at the length bound, or not JSON after all
        return None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return None
    level = data.get("level")
    logger = data.get("logger")
    fields = {
        name: value[:limit]
        for name, limit in _FORWARDED.items()
        if isinstance(value := data.get(name), str) and value
    }
    return PluginLine(
        _LEVELS.get(level) if isinstance(level, str) else None,
        logger[:200] if isinstance(logger, str) else "",
        data["message"],
        fields,
    )
