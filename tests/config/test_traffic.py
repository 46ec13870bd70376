"""A namespace's ``traffic`` section: strict values, errors naming the field, documented
defaults (nothing limited, the breaker on)."""

from __future__ import annotations

import pytest

from prism.config import ConfigError, parse_config
from prism.config.traffic import BreakerConfig, TrafficConfig


def namespace_with(traffic: object) -> dict[str, object]:
    return {"namespaces": [{"name": "kv", "plugin": {"name": "memstore"}, "traffic": traffic}]}


def test_traffic_defaults_limit_nothing_and_keep_the_breaker_on() -> None:
    traffic = TrafficConfig()
    assert (traffic.rate_limit, traffic.caller_rate_limit, traffic.concurrency) == (None,) * 3
    assert traffic.default_timeout is None
    assert traffic.breaker == BreakerConfig()
    assert traffic.breaker.enabled
    assert (traffic.breaker.consecutive_failures, traffic.breaker.open_seconds) == (10, 5.0)


def test_traffic_reads_every_section_from_a_file() -> None:
    config = parse_config(
        namespace_with(
            {
                "rate_limit": {"rate": 100, "burst": 200},
                "caller_rate_limit": {"rate": 0.5, "max_callers": 50},
                "concurrency": {"max_in_flight": 8, "max_queue": 16, "queue_timeout": 0.25},
                "breaker": {"enabled": False},
                "default_timeout": 2,
            }
        )
    )
    traffic = config.namespace("kv").traffic
    assert traffic.rate_limit is not None
    assert traffic.rate_limit.burst == 200
    assert traffic.caller_rate_limit is not None
    assert traffic.caller_rate_limit.rate == 0.5
    assert traffic.concurrency is not None
    assert traffic.concurrency.max_queue == 16
    assert not traffic.breaker.enabled
    assert traffic.default_timeout == 2.0


@pytest.mark.parametrize(
    ("traffic", "error"),
    [
        ({"rate_limit": {"rate": "10"}}, "namespaces[0].traffic.rate_limit.rate: expected a"),
        ({"rate_limit": {"rate": 0}}, "namespaces[0].traffic.rate_limit.rate: "),
        ({"rate_limit": {}}, "namespaces[0].traffic.rate_limit.rate: required"),
        ({"rate_limit": {"rate": 1, "burst": 1.5}}, "traffic.rate_limit.burst: expected a"),
        ({"concurrency": {"max_queue": 1}}, "traffic.concurrency.max_in_flight: required"),
        ({"concurrency": {"max_in_flight": 1, "max_queue": -1}}, "traffic.concurrency.max_queue"),
        ({"breaker": {"failure_rate": 1.5}}, "traffic.breaker.failure_rate: "),
        ({"breaker": {"enabled": "yes"}}, "traffic.breaker.enabled: expected true or false"),
        ({"default_timeout": 0}, "traffic.default_timeout: expected a positive number"),
        ({"rate_limits": {"rate": 1}}, "traffic.rate_limits: unknown field"),
    ],
)
def test_traffic_bad_values_name_their_field(traffic: object, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(namespace_with(traffic))
    assert any(error in line for line in raised.value.errors), raised.value.errors
