"""A small etcd v3 client on Trio (:mod:`prism.etcd.client`) and etcd URLs
(:mod:`prism.etcd.target`)."""

from __future__ import annotations

from prism.etcd.client import (
    Compare,
    EtcdAccess,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    Put,
    RangeResult,
    TxnResult,
    WatchBatch,
    WatchCompacted,
    WatchEvent,
    prefix_end,
)
from prism.etcd.target import EtcdTarget, is_etcd_url, parse_target

__all__ = [
    "Compare",
    "EtcdAccess",
    "EtcdClient",
    "EtcdError",
    "EtcdTarget",
    "EtcdUnavailable",
    "KeyValue",
    "LeaseNotFound",
    "Put",
    "RangeResult",
    "TxnResult",
    "WatchBatch",
    "WatchCompacted",
    "WatchEvent",
    "is_etcd_url",
    "parse_target",
    "prefix_end",
]
