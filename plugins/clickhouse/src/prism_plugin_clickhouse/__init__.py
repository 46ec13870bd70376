"""Prism backend plugin: the sql contract on ClickHouse's HTTP interface."""

from __future__ import annotations

from prism_plugin_clickhouse._proto.prism.plugins.clickhouse.v1 import ClickHouseConfig
from prism_plugin_clickhouse.plugin import ClickHousePlugin

__all__ = ["ClickHouseConfig", "ClickHousePlugin"]
