"""Prism backend plugin: a durable key-value store on SQLite (the standard library's sqlite3)."""

from __future__ import annotations

from prism_plugin_sqlite._proto.prism.plugins.sqlite.v1 import SqliteConfig
from prism_plugin_sqlite.plugin import SqlitePlugin

__all__ = ["SqliteConfig", "SqlitePlugin"]
