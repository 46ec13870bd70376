"""The ``metrics`` section: an HTTP listener of its own for a Prometheus scraper and for
orchestrators' probes (``GET /metrics``, ``GET /healthz``), on any address.

The admin port stays loopback-only because its API can stop plugins; a scraper in another pod
or on another host cannot reach it. This listener serves two read-only routes and nothing else,
without credentials (as scrapers and kubelets call them), so it is off unless configured.
"""

from __future__ import annotations

from prism.config._model import Model
from prism.config._types import Address, PositiveInt

__all__ = ["MetricsConfig"]


class MetricsConfig(Model):
    """An extra listener for ``/metrics`` and ``/healthz`` only."""

    listen: Address | None = None
    """host:port to serve ``GET /metrics`` and ``GET /healthz`` on, plaintext HTTP/1.1, to
    anyone who can connect (restrict it with a firewall or a NetworkPolicy); none = off."""
    max_connections: PositiveInt = 64
    """Connections open at once on it; more are closed as they arrive."""
