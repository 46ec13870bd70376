"""ProxyMetrics as Prometheus sees it: every value goes through prometheus-client's exposition
and parser. Label values stay bounded whatever clients send."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prism._proto.prism.plugin.v1 import PluginMetrics
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import Status
from prism.proxy.metrics import ProxyMetrics
from prism.proxy.request import RequestInfo

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PEER = PeerInfo("127.0.0.1:1", "tcp")


def samples(metrics: ProxyMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: ProxyMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def finish(
    metrics: ProxyMetrics,
    namespace: str,
    operation: str,
    status: Status = Status.OK,
    seconds: float = 0.0003,
    *,
    stream: bool = False,
) -> None:
    info = RequestInfo(PEER, 0.0, stream=stream)
    info.namespace, info.operation = namespace, operation
    metrics.request_started(info, metrics.namespace(namespace))
    metrics.request_finished(info, status, seconds)


def test_metrics_request_count_latency_and_in_flight() -> None:
    metrics = ProxyMetrics()
    kv = metrics.add_namespace("kv")
    info = RequestInfo(PEER, 0.0)
    info.namespace, info.operation = "kv", "get"
    metrics.request_started(info, kv)
    assert value(metrics, "prism_requests_in_flight", namespace="kv") == 1
    metrics.request_finished(info, Status.OK, 0.0003)
    finish(metrics, "kv", "get", Status.UNAVAILABLE, 2.0)
    assert value(metrics, "prism_requests_in_flight", namespace="kv") == 0
    assert value(metrics, "prism_requests_total", namespace="kv", operation="get", status="OK") == 1
    assert (
        value(
            metrics, "prism_requests_total", namespace="kv", operation="get", status="UNAVAILABLE"
        )
        == 1
    )
    bucket = "prism_request_duration_seconds_bucket"
    labels = {"namespace": "kv", "operation": "get"}
    assert value(metrics, bucket, le="0.00025", **labels) == 0
    assert value(metrics, bucket, le="0.0005", **labels) == 1  # cumulative from here on
    assert value(metrics, bucket, le="2.5", **labels) == 2
    assert value(metrics, bucket, le="+Inf", **labels) == 2
    assert value(metrics, "prism_request_duration_seconds_sum", **labels) == 2.0003


def test_metrics_streams_are_counted_not_timed() -> None:
    metrics = ProxyMetrics()
    metrics.add_namespace("kv")
    finish(metrics, "kv", "subscribe", seconds=3600.0, stream=True)
    assert value(
        metrics, "prism_requests_total", namespace="kv", operation="subscribe", status="OK"
    )
    assert value(metrics, "prism_streams_active", namespace="kv") == 0
    assert not any(
        name.startswith("prism_request_duration_seconds") and ("operation", "subscribe") in labels
        for name, labels in samples(metrics)
    )


def test_metrics_operation_labels_are_bounded() -> None:
    metrics = ProxyMetrics(max_operations=2)
    metrics.add_namespace("kv")
    finish(metrics, "kv", "typo", Status.UNIMPLEMENTED)  # the plugin has no such operation
    finish(metrics, "kv", "secret-op", Status.PERMISSION_DENIED)
    finish(metrics, "kv", "get")
    finish(metrics, "kv", "set")
    finish(metrics, "kv", "delete")  # over max_operations
    finish(metrics, "unconfigured", "get", Status.NOT_FOUND)
    operations = {
        dict(labels)["operation"]
        for name, labels in samples(metrics)
        if name == "prism_requests_total" and dict(labels)["namespace"] == "kv"
    }
    assert operations == {"get", "set", "_other"}
    total = "prism_requests_total"
    assert value(metrics, total, namespace="kv", operation="_other", status="UNIMPLEMENTED") == 1
    assert value(metrics, total, namespace="kv", operation="_other", status="OK") == 1
    assert value(metrics, total, namespace="_unknown", operation="_other", status="NOT_FOUND") == 1
    finish(metrics, "kv", "get", Status.UNIMPLEMENTED)  # a known name keeps its label
    assert value(metrics, total, namespace="kv", operation="get", status="UNIMPLEMENTED") == 1


def test_metrics_removed_namespace_leaves_the_exposition() -> None:
    metrics = ProxyMetrics()
    metrics.add_namespace("kv").rate_limited.inc()
    finish(metrics, "kv", "get")
    metrics.remove_namespace("kv")
    assert not any(("namespace", "kv") in labels for _, labels in samples(metrics))


def test_metrics_namespace_stage_series() -> None:
    metrics = ProxyMetrics()
    kv = metrics.add_namespace("kv")
    kv.rate_limited.inc()
    kv.queue_full.inc()
    kv.queue_timeout.inc(2)
    kv.queue_wait.observe(0.002)
    kv.denied.inc()
    kv.breaker("closed")
    kv.breaker("open", "closed")
    kv.breaker("half_open", "open")
    metrics.auth_failed("expired")
    metrics.auth_failed("expired")
    assert value(metrics, "prism_rate_limited_total", namespace="kv") == 1
    rejected = "prism_concurrency_rejected_total"
    assert value(metrics, rejected, namespace="kv", reason="queue_full") == 1
    assert value(metrics, rejected, namespace="kv", reason="queue_timeout") == 2
    assert value(metrics, "prism_queue_wait_seconds_count", namespace="kv") == 1
    assert value(metrics, "prism_authorization_denied_total", namespace="kv") == 1
    assert value(metrics, "prism_breaker_state", namespace="kv") == 1  # half-open
    transitions = "prism_breaker_transitions_total"
    assert value(metrics, transitions, namespace="kv", state="open") == 1
    assert value(metrics, transitions, namespace="kv", state="half_open") == 1
    assert value(metrics, transitions, namespace="kv", state="closed") is None  # the first state
    assert value(metrics, "prism_auth_failures_total", reason="expired") == 2


def test_metrics_plugin_intervals_are_added_once_with_rates_over_their_length() -> None:
    metrics = ProxyMetrics()
    now = 1_800_000_000 * 10**9
    interval = PluginMetrics(
        requests_total=10,
        requests_failed=2,
        cache_hits=3,
        cache_misses=1,
        latency_ms=1.5,
        connections_active=4,
        interval_start_ns=now - 2 * 10**9,
    )
    metrics.plugin_polled("kv", interval, now)
    assert value(metrics, "prism_plugin_requests_total", namespace="kv") == 10
    assert value(metrics, "prism_plugin_requests_failed_total", namespace="kv") == 2
    assert value(metrics, "prism_plugin_requests_per_second", namespace="kv") == 5.0
    assert value(metrics, "prism_plugin_failures_per_second", namespace="kv") == 1.0
    assert value(metrics, "prism_plugin_cache_hit_ratio", namespace="kv") == 0.75
    assert value(metrics, "prism_plugin_latency_seconds", namespace="kv") == 0.0015
    assert value(metrics, "prism_plugin_connections_active", namespace="kv") == 4
    # The next interval: 4 more over 4 s. Counters add the delta; the rate is the new one's.
    later = PluginMetrics(requests_total=4, interval_start_ns=now, connections_active=4)
    metrics.plugin_polled("kv", later, now + 4 * 10**9)
    assert value(metrics, "prism_plugin_requests_total", namespace="kv") == 14
    assert value(metrics, "prism_plugin_requests_per_second", namespace="kv") == 1.0
    assert value(metrics, "prism_plugin_cache_hit_ratio", namespace="kv") == 0.75  # no lookups
    # No interval start, or clocks too far apart: the rate is left as it was.
    metrics.plugin_polled("kv", PluginMetrics(requests_total=9), now + 5 * 10**9)
    skewed = PluginMetrics(requests_total=9, interval_start_ns=now + 60 * 10**9)
    metrics.plugin_polled("kv", skewed, now + 6 * 10**9)
    assert value(metrics, "prism_plugin_requests_per_second", namespace="kv") == 1.0
    assert value(metrics, "prism_plugin_requests_total", namespace="kv") == 32
    assert value(metrics, "prism_plugin_metrics_polls_total", namespace="kv") == 4


def test_metrics_every_issue_9_family_is_exposed() -> None:
    metrics = ProxyMetrics()
    names = {family.name for family in metrics.registry.collect()}
    assert names >= {
        "prism_requests",
        "prism_request_duration_seconds",
        "prism_requests_in_flight",
        "prism_streams_active",
        "prism_queue_wait_seconds",
        "prism_rate_limited",
        "prism_concurrency_rejected",
        "prism_breaker_state",
        "prism_breaker_transitions",
        "prism_plugin_restarts",
        "prism_plugin_reloads",
        "prism_auth_failures",
        "prism_authorization_denied",
        "prism_plugin_requests",
        "prism_plugin_requests_per_second",
    }


def test_metrics_endpoint_series_of_a_balanced_remote() -> None:
    metrics = ProxyMetrics()
    metrics.add_namespace("far")
    series = metrics.endpoint_series("far", "10.0.0.7:7443")
    labels = {"namespace": "far", "endpoint": "10.0.0.7:7443"}
    # Present, at zero, from the start (a dashboard sees the endpoint before its first call).
    assert value(metrics, "prism_plugin_endpoint_ejected", **labels) == 0
    for _ in range(3):
        series.requests.inc()
    series.failures.inc()
    series.ejections.inc()
    series.ejected.set(1)
    assert value(metrics, "prism_plugin_endpoint_requests_total", **labels) == 3
    assert value(metrics, "prism_plugin_endpoint_failures_total", **labels) == 1
    assert value(metrics, "prism_plugin_endpoint_ejections_total", **labels) == 1
    assert value(metrics, "prism_plugin_endpoint_ejected", **labels) == 1
    metrics.remove_namespace("far")
    assert value(metrics, "prism_plugin_endpoint_requests_total", **labels) is None
