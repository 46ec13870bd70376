"""The ``tracing`` section: W3C trace context and OpenTelemetry spans, for the request
pipeline's tracing stage (``prism.proxy.assembly``). Nothing here is set yet.
"""

from __future__ import annotations

from prism.config._model import Model

__all__ = ["TracingConfig"]


class TracingConfig(Model):
    """Trace context and spans."""
