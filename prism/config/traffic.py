"""A namespace's ``traffic`` section: rate limits, concurrency limit, circuit breaker, default
deadline, read by the request pipeline's traffic stages (``prism.proxy.assembly``). Nothing
here is set yet: with nothing set, no call is limited, as before this section existed.
"""

from __future__ import annotations

from prism.config._model import Model

__all__ = ["TrafficConfig"]


class TrafficConfig(Model):
    """How much traffic a namespace takes, and what protects its plugin."""
