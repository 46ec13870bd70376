"""The ``tracing`` section: W3C trace context and OpenTelemetry spans, for the request
pipeline's tracing stage (:mod:`prism.proxy.tracing`, built by ``prism.proxy.assembly``).
"""

from __future__ import annotations

from pydantic import field_validator

from prism.config._model import Model
from prism.config._types import Flag, Text

__all__ = ["TracingConfig"]


class TracingConfig(Model):
    """Trace context and spans."""

    enabled: Flag = True
    """Read W3C ``traceparent``/``tracestate`` from clients (start a trace when there is none or
    it is invalid), pass it to plugins in the request metadata, and put the trace id in the
    audit record and the logs."""
    otlp_endpoint: Text | None = None
    """An OTLP/HTTP traces URL (``http://collector:4318/v1/traces``): export a span per call.
    Needs ``pip install prism-proxy[otel]``. None: no spans, OpenTelemetry is not imported.
    Headers (a collector's API key) come from ``OTEL_EXPORTER_OTLP_HEADERS``, as the OTLP
    exporter reads them, so that no secret sits in this file."""
    service_name: Text = "prism"
    """The spans' ``service.name`` resource attribute."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url
