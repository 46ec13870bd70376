"""The ``fleet`` section and fleet rate limits in the config: defaults, the password kept as
its secret reference until start (and never in an error), a fleet limit without
``fleet.redis`` refused naming its field, strict values."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.config import ConfigError, parse_config
from prism.config.load import load_config_text


def document(redis: object = None, **rate_limit: object) -> dict[str, object]:
    namespace: dict[str, object] = {"name": "kv", "plugin": {"name": "memstore"}}
    if rate_limit:
        namespace["traffic"] = {"rate_limit": rate_limit}
    doc: dict[str, object] = {"namespaces": [namespace]}
    if redis is not None:
        doc["fleet"] = {"redis": redis}
    return doc


def test_config_fleet_defaults_share_nothing() -> None:
    config = parse_config({})
    assert config.fleet.redis is None
    limit = parse_config(document(rate=10)).namespace("kv").traffic.rate_limit
    assert limit is not None
    assert (limit.scope, limit.on_redis_failure, limit.fallback_rate) == ("local", "open", None)
    assert (limit.max_batch, limit.max_wait) == (20, 0.05)


def test_config_fleet_redis_defaults_and_limit() -> None:
    config = parse_config(document({}, rate=100, scope="fleet", on_redis_failure="closed"))
    redis = config.fleet.redis
    assert redis is not None
    assert (redis.address, redis.db, redis.key_prefix) == ("127.0.0.1:6379", 0, "prism:ratelimit:")
    assert (redis.call_timeout, redis.reconnect_max, redis.max_connections) == (0.25, 5.0, 4)
    limit = config.namespace("kv").traffic.rate_limit
    assert limit is not None
    assert (limit.scope, limit.on_redis_failure) == ("fleet", "closed")


def test_config_fleet_limit_needs_fleet_redis() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document(rate=100, scope="fleet"))
    assert raised.value.errors == (
        "namespaces[0].traffic.rate_limit.scope: a fleet limit needs fleet.redis "
        "(the Redis the proxies share)",
    )


def test_config_fleet_password_is_read_at_start_and_never_shown(tmp_path: Path) -> None:
    text = 'fleet: {redis: {password: "{{ secret:redis-password }}"}}\n'
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, source="prism.yaml", base=tmp_path)  # not there yet
    assert raised.value.errors[0].startswith("fleet.redis.password: secret 'redis-password'")
    (tmp_path / "redis-password").write_text("s3cr3t-value\n")
    text += f"secrets: {{directory: {tmp_path}}}\n"
    config = load_config_text(text, source="prism.yaml", base=tmp_path)
    assert config.fleet.redis is not None
    assert config.fleet.redis.password == "{{ secret:redis-password }}"  # kept unresolved
    assert "s3cr3t" not in repr(config)
    assert config.fleet_redis_password() == "s3cr3t-value"


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (document({"address": "redis"}), "fleet.redis.address: 'redis' is not host:port"),
        (document({"db": 16}), "fleet.redis.db: "),
        (document({"call_timeout": 0}), "fleet.redis.call_timeout: expected a positive number"),
        (document({"password": "{{ nope }}"}), "fleet.redis.password: "),
        (document({"port": 6379}), "fleet.redis.port: unknown field"),
        (
            document({}, rate=1, scope="everywhere"),
            "namespaces[0].traffic.rate_limit.scope: 'everywhere' is not one of local, fleet",
        ),
        (
            document({}, rate=1, scope="fleet", on_redis_failure="maybe"),
            "namespaces[0].traffic.rate_limit.on_redis_failure: 'maybe' is not one of open, closed",
        ),
        (
            document({}, rate=1, scope="fleet", max_batch=0),
            "namespaces[0].traffic.rate_limit.max_batch: expected a positive integer",
        ),
        (
            {
                "namespaces": [
                    {
                        "name": "kv",
                        "plugin": {"name": "memstore"},
                        "traffic": {"caller_rate_limit": {"rate": 1, "scope": "fleet"}},
                    }
                ]
            },
            "namespaces[0].traffic.caller_rate_limit.scope: unknown field",
        ),
    ],
)
def test_config_fleet_bad_values_name_their_field(doc: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(doc)
    assert any(line.startswith(error) for line in raised.value.errors), raised.value.errors
