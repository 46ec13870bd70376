"""KvService's calls, directly on asyncio (no sockets): states, config, params, TTL, metrics.

Only the plugin's own generated messages are used here, as a client in any runtime would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import betterproto2
import pytest
from prism_plugin_asyncio_kv._proto.google.protobuf import Any as ProtoAny
from prism_plugin_asyncio_kv._proto.google.protobuf import Struct, Value
from prism_plugin_asyncio_kv._proto.prism.config.v1 import ConfigDocument
from prism_plugin_asyncio_kv._proto.prism.data.v1 import (
    GetRequest,
    GetResponse,
    SetRequest,
)
from prism_plugin_asyncio_kv._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponseStatus,
    InitializeRequest,
    PluginMetrics,
    ShutdownRequest,
)
from prism_plugin_asyncio_kv.service import KvService

T = TypeVar("T")
M = TypeVar("M", bound=betterproto2.Message)

UNIMPLEMENTED, INVALID_ARGUMENT, FAILED_PRECONDITION, UNAVAILABLE = 12, 3, 9, 14


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def document(**values: Value) -> ProtoAny:
    return ProtoAny.pack(ConfigDocument(values=Struct(fields=values)))


def execute(service: KvService, operation: str, params: betterproto2.Message) -> ExecuteResponse:
    request = ExecuteRequest(operation=operation, typed_params=ProtoAny.pack(params))
    return run(service.execute(request))


def result(response: ExecuteResponse, cls: type[M]) -> M:
    assert response.success, response.error
    assert response.typed_result is not None
    return cls.parse(response.typed_result.value)


def ready(config: ProtoAny | None = None, **kwargs: Any) -> KvService:
    service = KvService(**kwargs)
    response = run(service.initialize(InitializeRequest(namespace="kv", config=config)))
    assert response.success, response.error
    return service


def test_asyncio_kv_service_before_initialize_is_failed_precondition() -> None:
    service = KvService()
    response = execute(service, "get", GetRequest(key="a"))
    assert (response.success, response.error_code) == (False, FAILED_PRECONDITION)
    health = run(service.health_check(HealthCheckRequest()))
    assert health.status == HealthCheckResponseStatus.UNHEALTHY


def test_asyncio_kv_service_unknown_operation_is_unimplemented() -> None:
    response = execute(ready(), "query", GetRequest(key="a"))
    assert (response.success, response.error_code) == (False, UNIMPLEMENTED)
    assert response.error == "unknown operation 'query' (operations: get, set, delete)"
    response = execute(ready(), "multi_get", GetRequest(key="a"))
    assert response.error_code == UNIMPLEMENTED
    assert "stream operation" in response.error


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (
            ExecuteRequest(operation="get", raw_params=b"x"),
            "operation 'get' params: expected prism.data.v1.GetRequest, got raw bytes",
        ),
        (
            ExecuteRequest(operation="get"),
            "operation 'get' params: expected prism.data.v1.GetRequest, got nothing",
        ),
        (
            ExecuteRequest(
                operation="get",
                typed_params=ProtoAny(
                    type_url="type.googleapis.com/prism.data.v1.GetRequest",
                    value=b"\n\x02\xff\xfe",  # key: 2 bytes that are not UTF-8
                ),
            ),
            "got bytes that do not decode",
        ),
    ],
)
def test_asyncio_kv_service_bad_params_are_invalid_argument(
    request_: ExecuteRequest, error: str
) -> None:
    response = run(ready().execute(request_))
    assert (response.success, response.error_code) == (False, INVALID_ARGUMENT)
    assert error in response.error


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (document(size=Value(number_value=1)), "config field 'size' is unknown"),
        (document(max_keys=Value(number_value=1.5)), "'max_keys' must be a non-negative integer"),
        (document(max_keys=Value(number_value=-1)), "'max_keys' must be a non-negative integer"),
        (document(max_keys=Value(string_value="3")), "'max_keys' must be a non-negative integer"),
        (ProtoAny.pack(GetRequest(key="x")), "config: expected prism.config.v1.ConfigDocument"),
    ],
)
def test_asyncio_kv_service_bad_config_fails_initialize(config: ProtoAny, error: str) -> None:
    service = KvService()
    response = run(service.initialize(InitializeRequest(namespace="kv", config=config)))
    assert not response.success
    assert response.error.startswith("INVALID_ARGUMENT: ")
    assert error in response.error
    assert execute(service, "get", GetRequest(key="a")).error_code == FAILED_PRECONDITION


def test_asyncio_kv_service_config_accepts_json_style_names() -> None:
    service = ready(document(maxKeys=Value(number_value=1)))
    assert service.max_keys == 1


def test_asyncio_kv_service_ttl_expires_keys() -> None:
    now = [100.0]
    service = ready(clock=lambda: now[0])
    assert execute(service, "set", SetRequest(key="a", value=b"1", ttl_ms=1500)).success
    now[0] += 1.0
    hit = execute(service, "get", GetRequest(key="a"))
    assert result(hit, GetResponse) == GetResponse(found=True, value=b"1")
    now[0] += 0.5
    miss = execute(service, "get", GetRequest(key="a"))
    assert result(miss, GetResponse) == GetResponse(found=False)
    negative = execute(service, "set", SetRequest(key="a", ttl_ms=-1))
    assert (negative.error_code, negative.error) == (
        INVALID_ARGUMENT,
        "ttl_ms must not be negative",
    )


def test_asyncio_kv_service_metrics_are_interval_based() -> None:
    service = ready()
    execute(service, "set", SetRequest(key="a", value=b"1"))
    execute(service, "get", GetRequest(key="a"))
    execute(service, "get", GetRequest(key="b"))
    execute(service, "get", GetRequest(key=""))
    fetch = ExecuteRequest(operation="_prism.metrics")
    first = result(run(service.execute(fetch)), PluginMetrics)
    assert (first.requests_total, first.requests_failed) == (4, 1)
    assert (first.cache_hits, first.cache_misses) == (1, 1)
    assert first.interval_start_ns > 0
    second = result(run(service.execute(fetch)), PluginMetrics)
    assert (second.requests_total, second.cache_hits) == (0, 0)
    assert second.interval_start_ns >= first.interval_start_ns


def test_asyncio_kv_service_after_shutdown_is_unavailable() -> None:
    service = ready()
    assert run(service.shutdown(ShutdownRequest(grace_period_ms=250))).success
    assert service.grace_seconds == 0.25
    response = execute(service, "get", GetRequest(key="a"))
    assert (response.success, response.error_code) == (False, UNAVAILABLE)
    health = run(service.health_check(HealthCheckRequest()))
    assert (health.status, health.message) == (HealthCheckResponseStatus.UNHEALTHY, "shut down")
    again = run(service.initialize(InitializeRequest(namespace="kv")))
    assert (again.success, again.error) == (False, "UNAVAILABLE: the plugin was shut down")
