"""prism.sdk.instance: the RFC's five calls on a plugin object, and the typed fast path."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from sdk_plugins import (
    SECRET,
    CrashingBackgroundPlugin,
    NoConfigPlugin,
    OptionalConfigPlugin,
    UnhealthyPlugin,
    WidgetConfig,
    WidgetPlugin,
)

from prism._proto.google.protobuf import Struct
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest, SetResponse
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    InitializeRequest,
    PluginMetrics,
    ShutdownRequest,
)
from prism.sdk import (
    METRICS_OPERATION,
    FailedPrecondition,
    HealthStatus,
    InvalidArgument,
    PluginInstance,
    State,
    Status,
    Unauthenticated,
    Unavailable,
    error_from_text,
    open_plugin,
    pack,
    unpack,
)
from prism.sdk._engine import DRAIN_SHARE

CREDENTIALS = {"password": SECRET}


@pytest.fixture
async def widget() -> AsyncIterator[PluginInstance]:
    async with open_plugin(WidgetPlugin()) as instance:
        await instance.setup(WidgetConfig(path="/data"), CREDENTIALS, "ns")
        yield instance


def init_request(config: object = None, **credentials: str) -> InitializeRequest:
    return InitializeRequest(
        namespace="ns",
        backend_type="widget",
        config=config,
        credentials=credentials or CREDENTIALS,
    )


# -- Initialize ------------------------------------------------------------------------------


async def test_instance_initialize_reports_version_and_operations() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request(pack(WidgetConfig(path="/d", limit=3))))
        assert response.success, response.error
        assert response.plugin_version == "1.2.3"
        assert "get" in response.supported_operations
        assert "chat" in response.supported_operations
        assert METRICS_OPERATION not in response.supported_operations
        plugin = instance.plugin
        assert isinstance(plugin, WidgetPlugin)
        assert plugin.config == WidgetConfig(path="/d", limit=3)
        assert plugin.namespace == "ns"
        assert instance.state is State.READY


async def test_instance_initialize_accepts_a_config_document_from_yaml() -> None:
    document = ConfigDocument(values=Struct.from_dict({"path": "/d", "limit": 7}))
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request(pack(document)))
        assert response.success, response.error
        assert instance.plugin.config == WidgetConfig(path="/d", limit=7)  # type: ignore[attr-defined]


async def test_instance_initialize_rejects_unknown_config_document_fields() -> None:
    document = ConfigDocument(values=Struct.from_dict({"path": "/d", "limt": 7}))
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request(pack(document)))
        assert not response.success
        assert response.error == (
            "INVALID_ARGUMENT: config.limt: unknown field in test.widget.v1.WidgetConfig"
        )
        assert instance.state is State.NEW


async def test_instance_initialize_config_of_wrong_type_names_expected_type() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request(pack(GetRequest(key="x"))))
        assert not response.success
        error = error_from_text(-1, response.error)
        assert isinstance(error, InvalidArgument)
        assert "expected test.widget.v1.WidgetConfig" in error.message
        assert "prism.data.v1.GetRequest" in error.message


async def test_instance_initialize_missing_config_is_invalid_argument() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request())
        assert response.error == "INVALID_ARGUMENT: config: required (test.widget.v1.WidgetConfig)"


async def test_instance_optional_config_defaults_when_absent() -> None:
    async with open_plugin(OptionalConfigPlugin()) as instance:
        assert (await instance.initialize(InitializeRequest(namespace="n"))).success
        assert instance.plugin.config == WidgetConfig()  # type: ignore[attr-defined]


async def test_instance_plugin_without_config_type_rejects_a_config() -> None:
    async with open_plugin(NoConfigPlugin()) as instance:
        response = await instance.initialize(init_request(pack(WidgetConfig(path="x"))))
        assert "takes no config" in response.error
        assert (await instance.initialize(InitializeRequest())).success


async def test_instance_plugin_field_validation_error_is_returned() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request(pack(WidgetConfig())))
        assert response.error == "INVALID_ARGUMENT: field 'path' is required"


async def test_instance_missing_credential_named_without_value() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(init_request(pack(WidgetConfig(path="x")), user="bob"))
        assert response.error == "INVALID_ARGUMENT: missing required credential 'password'"


async def test_instance_rejected_credentials_are_unauthenticated() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.initialize(
            init_request(pack(WidgetConfig(path="x")), password="wrong")
        )
        assert error_from_text(-1, response.error).status == Status.UNAUTHENTICATED


async def test_instance_initialize_twice_is_failed_precondition(widget: PluginInstance) -> None:
    with pytest.raises(FailedPrecondition, match="already initialized"):
        await widget.setup(WidgetConfig(path="x"), CREDENTIALS, "ns")


async def test_instance_failed_initialize_may_be_retried(caplog: pytest.LogCaptureFixture) -> None:
    plugin = WidgetPlugin()
    plugin.fail_initialize_times = 1
    async with open_plugin(plugin) as instance:
        first = await instance.initialize(init_request(pack(WidgetConfig(path="x"))))
        assert first.error.startswith("UNKNOWN: internal error in initialize (trace id ")
        assert instance.state is State.NEW
        assert (await instance.initialize(init_request(pack(WidgetConfig(path="x"))))).success


# -- Execute ---------------------------------------------------------------------------------


async def test_instance_execute_before_initialize_is_failed_precondition() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.execute(ExecuteRequest(operation="echo_raw", raw_params=b""))
        assert not response.success
        assert response.error_code == Status.FAILED_PRECONDITION
        assert response.error == "plugin 'widget' is not initialized"


async def test_instance_execute_typed_round_trip(widget: PluginInstance) -> None:
    await widget.execute(
        ExecuteRequest(operation="set", typed_params=pack(SetRequest(key="k", value=b"v")))
    )
    response = await widget.execute(
        ExecuteRequest(operation="get", typed_params=pack(GetRequest(key="k")))
    )
    assert response.success
    assert response.raw_result is None
    assert unpack(response.typed_result, GetResponse) == GetResponse(found=True, value=b"v")


async def test_instance_execute_raw_round_trip(widget: PluginInstance) -> None:
    response = await widget.execute(
        ExecuteRequest(operation="echo_raw", raw_params=b"abc", metadata={"suffix": "!"})
    )
    assert (response.success, response.raw_result, response.typed_result) == (True, b"abc!", None)


async def test_instance_unknown_operation_is_unimplemented_naming_it(
    widget: PluginInstance,
) -> None:
    response = await widget.execute(ExecuteRequest(operation="frobnicate"))
    assert response.error_code == Status.UNIMPLEMENTED
    assert "'frobnicate'" in response.error


async def test_instance_stream_operation_on_execute_is_unimplemented(
    widget: PluginInstance,
) -> None:
    response = await widget.execute(ExecuteRequest(operation="chat"))
    assert response.error_code == Status.UNIMPLEMENTED
    assert "ExecuteStream" in response.error


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            ExecuteRequest(operation="get", typed_params=pack(SetRequest(key="k"))),
            "expected prism.data.v1.GetRequest, got type.googleapis.com/prism.data.v1.SetRequest",
        ),
        (ExecuteRequest(operation="get", raw_params=b"\x0a\x01k"), "got raw bytes"),
        (ExecuteRequest(operation="get"), "expected prism.data.v1.GetRequest, got nothing"),
        (
            ExecuteRequest(operation="echo_raw", typed_params=pack(GetRequest(key="k"))),
            "raw bytes (raw_params), got type.googleapis.com/prism.data.v1.GetRequest",
        ),
    ],
)
async def test_instance_param_type_mismatch_is_invalid_argument(
    widget: PluginInstance, request_: ExecuteRequest, expected: str
) -> None:
    response = await widget.execute(request_)
    assert response.error_code == Status.INVALID_ARGUMENT
    assert expected in response.error


async def test_instance_undecodable_params_are_invalid_argument(widget: PluginInstance) -> None:
    any_ = pack(GetRequest(key="k"))
    any_.value = b"\x0a\xff"  # a string field claiming 255 bytes that are not there
    response = await widget.execute(ExecuteRequest(operation="get", typed_params=any_))
    assert response.error_code == Status.INVALID_ARGUMENT
    assert response.error == (
        "operation 'get' params: expected prism.data.v1.GetRequest, got malformed bytes: "
        "field 1 (key): truncated varint"
    )


async def test_instance_grpc_error_from_handler_keeps_status(widget: PluginInstance) -> None:
    response = await widget.execute(
        ExecuteRequest(operation="get", typed_params=pack(GetRequest(key="nope")))
    )
    assert (response.success, response.error_code, response.error) == (
        False,
        Status.NOT_FOUND,
        "no key 'nope'",
    )


async def test_instance_status_error_inside_handler_nursery_keeps_status(
    widget: PluginInstance,
) -> None:
    response = await widget.execute(ExecuteRequest(operation="group", raw_params=b""))
    assert (response.error_code, response.error) == (Status.NOT_FOUND, "inside a nursery")


async def test_instance_unexpected_exception_is_unknown_with_trace_id_in_log(
    widget: PluginInstance, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="prism.plugin.widget"):
        response = await widget.execute(ExecuteRequest(operation="crash", raw_params=b""))
    assert response.error_code == Status.UNKNOWN
    match = re.search(r"trace id ([0-9a-f]{32})", response.error)
    assert match, response.error
    (record,) = caplog.records
    assert record.name == "prism.plugin.widget"
    logged = record.getMessage()
    assert match.group(1) in logged
    assert "RuntimeError" in logged
    assert "in crash" in logged  # the traceback's frames are there
    assert SECRET not in logged  # the exception's text is not
    assert SECRET not in response.error


async def test_instance_credentials_never_appear_in_errors_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    plugin = WidgetPlugin()
    plugin.fail_initialize_times = 1
    texts: list[str] = []
    async with open_plugin(plugin) as instance:
        request = init_request(pack(WidgetConfig(path="x")))
        texts.append((await instance.initialize(request)).error)  # RuntimeError quoting it
        assert (await instance.initialize(request)).success
        for operation in ("crash", "leak"):
            response = await instance.execute(ExecuteRequest(operation=operation, raw_params=b""))
            texts.append(response.error)
        plugin.health_report = plugin.health_report.__class__(
            HealthStatus.DEGRADED, f"login {SECRET} failed", {"dsn": f"u:{SECRET}@h"}
        )
        health = await instance.health_check()
        texts += [health.message, *health.details.values()]
        texts.append(repr(plugin.credentials))
        with pytest.raises(Unauthenticated) as info:
            await instance.call("leak", b"")
        texts.append(str(info.value))
    assert texts[2] == "password [REDACTED] rejected"
    texts += [record.getMessage() for record in caplog.records]
    assert all(SECRET not in text for text in texts), texts


async def test_instance_wrong_result_type_is_internal(
    widget: PluginInstance, caplog: pytest.LogCaptureFixture
) -> None:
    response = await widget.execute(ExecuteRequest(operation="wrong_result", raw_params=b""))
    assert response.error_code == Status.INTERNAL
    assert "returned prism.data.v1.SetResponse" in response.error
    assert "declares prism.data.v1.GetResponse" in response.error


async def test_instance_typed_call_skips_serialization(widget: PluginInstance) -> None:
    params = SetRequest(key="k", value=b"v")
    assert await widget.call("set", params) == SetResponse()
    result = await widget.call("get", GetRequest(key="k"))
    assert result == GetResponse(found=True, value=b"v")
    assert await widget.call("echo_raw", b"x", {"suffix": "y"}) == b"xy"


def SetResponse_() -> object:
    from prism._proto.prism.data.v1 import SetResponse

    return SetResponse()


async def test_instance_typed_call_wrong_type_names_expected_and_got(
    widget: PluginInstance,
) -> None:
    with pytest.raises(InvalidArgument, match=r"expects params prism\.data\.v1\.GetRequest, got"):
        await widget.call("get", SetRequest(key="k"))
    with pytest.raises(InvalidArgument, match=r"expects params raw bytes, got prism\.data\.v1"):
        await widget.call("echo_raw", GetRequest(key="k"))


async def test_instance_request_metadata_and_namespace_reach_the_handler(
    widget: PluginInstance,
) -> None:
    response = await widget.execute(
        ExecuteRequest(operation="metadata", raw_params=b"", metadata={"trace-id": "t1"})
    )
    assert response.raw_result == b"[('trace-id', 't1')]@ns"


# -- metrics ---------------------------------------------------------------------------------


async def test_instance_metrics_operation_returns_plugin_metrics(widget: PluginInstance) -> None:
    widget.metrics()
    await widget.call("set", SetRequest(key="k", value=b"v"))
    await widget.call("get", GetRequest(key="k"))
    response = await widget.execute(ExecuteRequest(operation="get", raw_params=b""))
    assert not response.success
    response = await widget.execute(ExecuteRequest(operation=METRICS_OPERATION))
    metrics = unpack(response.typed_result, PluginMetrics)
    assert (metrics.requests_total, metrics.requests_failed) == (3, 1)
    assert (metrics.cache_hits, metrics.cache_misses) == (1, 0)
    assert metrics.latency_ms > 0
    again = unpack(
        (await widget.execute(ExecuteRequest(operation=METRICS_OPERATION))).typed_result,
        PluginMetrics,
    )
    assert again.requests_total == 0  # a new interval; fetching is not a request
    assert again.interval_start_ns >= metrics.interval_start_ns


async def test_instance_metrics_operation_works_before_initialize() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        response = await instance.execute(ExecuteRequest(operation=METRICS_OPERATION))
        assert response.success


async def test_instance_caller_cancellation_is_not_a_failure(widget: PluginInstance) -> None:
    widget.metrics()
    with trio.move_on_after(0.01):
        await widget.call("slow", b"")
    metrics = widget.metrics()
    assert (metrics.requests_total, metrics.requests_failed, metrics.latency_ms) == (1, 0, 0.0)


# -- HealthCheck -----------------------------------------------------------------------------


async def test_instance_health_follows_the_lifecycle() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        before = await instance.health_check()
        assert (before.status, before.message) == (HealthStatus.UNHEALTHY, "not initialized")
        await instance.setup(WidgetConfig(path="x"), CREDENTIALS, "ns")
        assert (await instance.health_check()).status == HealthStatus.HEALTHY
        await instance.aclose()
        after = await instance.health_check()
        assert (after.status, after.message) == (HealthStatus.UNHEALTHY, "shut down")


async def test_instance_health_hook_failure_reads_unhealthy() -> None:
    async with open_plugin(UnhealthyPlugin()) as instance:
        await instance.setup(None, {}, "ns")
        failing = await instance.health_check()
        assert failing.status == HealthStatus.UNHEALTHY
        assert "trace id" in failing.message
        instance.plugin.metrics.connections_active = 1
        degraded = await instance.health_check()
        assert (degraded.status, degraded.details) == (HealthStatus.DEGRADED, {"replicas": "1/2"})


# -- Shutdown --------------------------------------------------------------------------------


async def test_instance_shutdown_lets_in_flight_operations_finish(
    widget: PluginInstance, autojump_clock: trio.abc.Clock
) -> None:
    plugin = widget.plugin
    assert isinstance(plugin, WidgetPlugin)
    results: list[bytes | object] = []
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            results.append(await widget.call("slow", b""))

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()

        async def release_later() -> None:
            # Within the half of the grace in-flight operations get (not at its very end,
            # where the autojump clock could order the two timers either way).
            await trio.sleep(0.4)
            plugin.release.set()

        nursery.start_soon(release_later)
        response = await widget.shutdown(ShutdownRequest(grace_period_ms=1000))
    assert response.success
    assert results == [b"done"]
    assert plugin.events == [
        "initialize",
        "begin_shutdown",
        "shutdown 0.6",  # what is left of the grace once the call finished
        "background cancelled",
    ]


async def test_instance_shutdown_cancels_operations_past_the_grace_period(
    widget: PluginInstance, autojump_clock: trio.abc.Clock
) -> None:
    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            try:
                await widget.call("slow", b"")
            except Unavailable as exc:
                outcome.append(exc)

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await widget.aclose(grace=2)
        # The operation had its share of the grace; the whole shutdown fits in the grace.
        assert trio.current_time() - start == pytest.approx(2 * DRAIN_SHARE)
    assert [str(e) for e in outcome] == [
        "UNAVAILABLE: plugin 'widget' shut down during operation 'slow'"
    ]


async def test_instance_execute_after_shutdown_is_unavailable(widget: PluginInstance) -> None:
    assert (await widget.shutdown(ShutdownRequest(reason="reload"))).success
    response = await widget.execute(ExecuteRequest(operation="echo_raw", raw_params=b""))
    assert (response.error_code, response.error) == (
        Status.UNAVAILABLE,
        "plugin 'widget' is shut down",
    )
    assert (await widget.shutdown(ShutdownRequest())).success  # idempotent
    with pytest.raises(Unavailable):
        await widget.setup(WidgetConfig(path="x"), CREDENTIALS, "ns")


async def test_instance_shutdown_hook_failure_is_reported() -> None:
    class BadShutdown(NoConfigPlugin):
        name = "badshutdown"

        async def shutdown(self, grace_seconds: float) -> None:
            raise OSError("disk on fire")

    async with open_plugin(BadShutdown()) as instance:
        await instance.setup(None, {}, "ns")
        response = await instance.shutdown(ShutdownRequest())
        assert not response.success
        assert response.error.startswith("UNKNOWN: internal error in shutdown (trace id ")
        assert instance.state is State.CLOSED


async def test_instance_scope_exit_shuts_the_plugin_down() -> None:
    plugin = WidgetPlugin()
    async with open_plugin(plugin) as instance:
        await instance.setup(WidgetConfig(path="x"), CREDENTIALS, "ns")
    hook, last = plugin.events[-2:]
    assert hook.startswith("shutdown ")
    assert float(hook.split()[1]) == pytest.approx(1.0, abs=0.5)  # what was left of the grace
    assert last == "background cancelled"
    assert instance.state is State.CLOSED


async def test_instance_crashing_background_task_ends_the_scope(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def run() -> None:
        async with open_plugin(CrashingBackgroundPlugin()) as instance:
            await instance.setup(None, {}, "ns")
            await trio.sleep_forever()

    with pytest.raises(BaseExceptionGroup) as info:
        await run()
    assert info.group_contains(OSError)


async def test_instance_nursery_is_only_available_inside_the_scope() -> None:
    plugin = NoConfigPlugin()
    with pytest.raises(RuntimeError, match="instance scope"):
        _ = plugin.nursery
    async with open_plugin(plugin):
        assert plugin.nursery is not None


async def test_instance_plugin_class_needs_a_name() -> None:
    from prism.sdk import BackendPlugin

    class Nameless(BackendPlugin):
        pass

    with pytest.raises(TypeError, match="name"):
        async with open_plugin(Nameless()):
            pass
