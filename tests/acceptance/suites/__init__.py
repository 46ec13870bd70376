"""The conformance suites, one module per contract; importing this package registers every
check (``kit.check``). ``refusal`` is built per target from what it does not claim."""

from __future__ import annotations

from suites import (
    kv_basic,
    kv_bulk,
    kv_etag,
    kv_list,
    kv_transact,
    kv_ttl,
    log,
    object,
    pubsub,
    sql,
)

__all__ = [
    "kv_basic",
    "kv_bulk",
    "kv_etag",
    "kv_list",
    "kv_transact",
    "kv_ttl",
    "log",
    "object",
    "pubsub",
    "sql",
]
