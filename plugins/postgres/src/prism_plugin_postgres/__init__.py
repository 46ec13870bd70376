"""Prism backend plugin: key-value, SQL and LISTEN/NOTIFY on PostgreSQL."""

from __future__ import annotations

from prism_plugin_postgres._proto.prism.plugins.postgres.v1 import PostgresConfig
from prism_plugin_postgres.plugin import PostgresPlugin

__all__ = ["PostgresConfig", "PostgresPlugin"]
