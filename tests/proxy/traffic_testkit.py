"""Helpers for the traffic-control tests: a proxy with ``traffic_plugins.FlakyPlugin``
namespaces, calls through its front door, and its /metrics samples."""

from __future__ import annotations

from typing import Any

from host_testkit import EXECUTE, proxy_config, request, running_proxy
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prism._proto.prism.proxy.v1 import ExecuteResponse
from prism.config import NamespaceConfig, PluginConfig, ProxyConfig
from prism.proxy.app import Proxy

__all__ = ["flaky", "flaky_proxy", "running_proxy", "sample", "work"]

FLAKY = "traffic_plugins:FlakyPlugin"


def flaky(name: str = "flaky", **traffic: Any) -> NamespaceConfig:
    """A namespace on FlakyPlugin (in-process), open to anonymous callers."""
    return NamespaceConfig(name, PluginConfig(FLAKY), access={"anonymous": True}, traffic=traffic)


def flaky_proxy(*namespaces: NamespaceConfig) -> ProxyConfig:
    return proxy_config(*namespaces)


async def work(
    running: Any, ns: str = "flaky", operation: str = "work", params: bytes = b"", **kw: Any
) -> bytes:
    """``operation`` on ``ns`` (raw bytes in and out); ``kw``: ``timeout``, ``metadata``."""
    response = await running.channel.unary_unary(
        EXECUTE, request(ns, operation, params), ExecuteResponse, **kw
    )
    raw: bytes = response.raw_result
    return raw


def sample(proxy: Proxy, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` in the proxy's /metrics text."""
    text = generate_latest(proxy.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None
