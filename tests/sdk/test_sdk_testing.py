"""prism.sdk.testing: the plugin test harness."""

from __future__ import annotations

import pytest
from sdk_plugins import SECRET, WidgetConfig, WidgetPlugin

from prism._proto.prism.data.v1 import GetRequest, GetResponse, Message, PublishRequest
from prism._proto.prism.data.v1 import SubscribeRequest as Open
from prism._proto.prism.plugin.v1 import ExecuteRequest
from prism.sdk import InvalidArgument, NotFound, State, Unauthenticated
from prism.sdk.testing import PluginHarness

CONFIG = WidgetConfig(path="/d")
CREDENTIALS = {"password": SECRET}


@pytest.fixture(params=[False, True], ids=["protocol", "typed"])
def typed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_harness_initializes_and_shuts_down(typed: bool) -> None:
    harness = PluginHarness(WidgetPlugin, config=CONFIG, credentials=CREDENTIALS, typed=typed)
    async with harness as h:
        plugin = h.plugin
        assert isinstance(plugin, WidgetPlugin)
        assert plugin.namespace == "test"
        assert h.instance.state is State.READY
    assert h._instance is None
    assert plugin.events[-1] == "background cancelled"


async def test_harness_raises_initialize_errors_with_their_status(typed: bool) -> None:
    harness = PluginHarness(
        WidgetPlugin, config=CONFIG, credentials={"password": "wrong"}, typed=typed
    )
    with pytest.raises(Unauthenticated, match="rejected the credentials"):
        async with harness:
            pass


async def test_harness_execute_returns_results_and_raises_errors(typed: bool) -> None:
    async with PluginHarness(
        WidgetPlugin, config=CONFIG, credentials=CREDENTIALS, typed=typed
    ) as h:
        assert await h.execute("echo_raw", b"a", {"suffix": "b"}) == b"ab"
        with pytest.raises(NotFound, match="no key 'k'"):
            await h.execute("get", GetRequest(key="k"))
        with pytest.raises(InvalidArgument):
            await h.execute("get", b"raw")


async def test_harness_execute_request_exposes_the_protocol() -> None:
    async with PluginHarness(WidgetPlugin, config=CONFIG, credentials=CREDENTIALS) as h:
        response = await h.execute_request(ExecuteRequest(operation="echo_raw", raw_params=b"x"))
        assert (response.success, response.raw_result) == (True, b"x")


async def test_harness_stream_sends_receives_and_ends(typed: bool) -> None:
    async with (
        PluginHarness(WidgetPlugin, config=CONFIG, credentials=CREDENTIALS, typed=typed) as h,
        h.stream("chat", Open(topic="t")) as stream,
    ):
        await stream.send(PublishRequest(payload=b"hi"))
        assert await stream.receive() == Message(topic="t", payload=b"hi", sequence=1)
        await stream.end()
        assert [m async for m in stream] == [Message(topic="t", payload=b"bye", sequence=2)]
        assert await stream.receive() is None
        assert stream.final
        assert stream.error is None


async def test_harness_stream_raises_the_streams_error(typed: bool) -> None:
    async with (
        PluginHarness(WidgetPlugin, config=CONFIG, credentials=CREDENTIALS, typed=typed) as h,
        h.stream("chat", Open(topic="t")) as stream,
    ):
        await stream.send(PublishRequest(payload=b"fail"))
        assert await stream.receive() == Message(topic="t", payload=b"fail", sequence=1)
        with pytest.raises(InvalidArgument, match="asked to fail"):
            await stream.receive()


async def test_harness_metrics_and_health() -> None:
    async with PluginHarness(WidgetPlugin, config=CONFIG, credentials=CREDENTIALS) as h:
        h.metrics()
        with pytest.raises(NotFound):
            await h.execute("get", GetRequest(key="k"))
        metrics = h.metrics()
        assert (metrics.requests_total, metrics.requests_failed, metrics.cache_misses) == (1, 1, 1)
        assert (await h.health()).status == 0


async def test_harness_typed_results_are_the_plugins_objects() -> None:
    async with PluginHarness(WidgetPlugin, config=CONFIG, credentials=CREDENTIALS, typed=True) as h:
        plugin = h.plugin
        assert isinstance(plugin, WidgetPlugin)
        plugin.store["k"] = b"v"
        assert await h.execute("get", GetRequest(key="k")) == GetResponse(found=True, value=b"v")
