"""Prism backend plugin: Redis — key-value with etags, bulk, transactions, TTLs and listing,
publish/subscribe, and Lua scripts."""

from __future__ import annotations

from prism_plugin_redis._proto.prism.plugins.redis.v1 import (
    EvalRequest,
    EvalResponse,
    RedisArray,
    RedisConfig,
    RedisValue,
)
from prism_plugin_redis.plugin import RedisPlugin

__all__ = ["EvalRequest", "EvalResponse", "RedisArray", "RedisConfig", "RedisPlugin", "RedisValue"]
