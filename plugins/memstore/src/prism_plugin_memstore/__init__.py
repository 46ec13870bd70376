"""Prism backend plugin: in-memory key-value store with TTLs, and topic publish/subscribe."""

from __future__ import annotations

from prism_plugin_memstore._proto.prism.plugins.memstore.v1 import MemstoreConfig
from prism_plugin_memstore.plugin import MemstorePlugin

__all__ = ["MemstoreConfig", "MemstorePlugin"]
