"""Prism backend plugin: NATS core publish/subscribe and the JetStream log/queue contract."""

from __future__ import annotations

from prism_plugin_nats._proto.prism.plugins.nats.v1 import NatsConfig
from prism_plugin_nats.plugin import NatsPlugin

__all__ = ["NatsConfig", "NatsPlugin"]
