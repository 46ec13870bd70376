"""Prism backend plugin: Memcached — get, set with expiry, delete, bulk, etags via CAS."""

from __future__ import annotations

from prism_plugin_memcached._proto.prism.plugins.memcached.v1 import MemcachedConfig
from prism_plugin_memcached.plugin import MemcachedPlugin

__all__ = ["MemcachedConfig", "MemcachedPlugin"]
