"""One operation suite against memstore in all three deployment models, through the proxy's
front door: in-process, a sidecar process (``python -m prism.hosting.launcher memstore``) and a
remote service (``prism plugin serve memstore``, mTLS both ways). Real processes and sockets."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from host_testkit import (
    EXECUTE_STREAM,
    RemoteService,
    Running,
    execute,
    namespace,
    pid_alive,
    proxy_config,
    remote_service,
    result,
    running_proxy,
)

from prism import grpc as pg
from prism._proto.grpc.health.v1 import HealthCheckRequest as GrpcHealthRequest
from prism._proto.grpc.health.v1 import HealthCheckResponse as GrpcHealthResponse
from prism._proto.prism.data.v1 import (
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    GetRequest,
    GetResponse,
    ListKeysRequest,
    ListKeysResponse,
    Message,
    PublishRequest,
    PublishResponse,
    SetRequest,
    SubscribeRequest,
)
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus
from prism._proto.prism.proxy.v1 import StreamRequest, StreamResponse
from prism.grpc.health import ServingStatus
from prism.hosting.client import InProcessClient
from prism.hosting.host import PluginStartFailed
from prism.sdk.instance import State
from prism.sdk.typed import pack, unpack

MODELS = ["in_process", "sidecar", "remote"]
HEALTH = "/grpc.health.v1.Health/Check"


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteService]:
    """One remote memstore service for the module: every proxy gets its own session in it."""
    with remote_service(tmp_path_factory.mktemp("remote")) as service:
        yield service


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
async def kv(model: str, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    if model == "remote":
        service: RemoteService = request.getfixturevalue("remote")
        ns = service.namespace("kv")
    else:
        ns = namespace("kv", "memstore", model)
    async with running_proxy(proxy_config(ns)) as running:
        yield running


async def health(running: Running, service: str) -> ServingStatus:
    response: GrpcHealthResponse = await running.channel.unary_unary(
        HEALTH, GrpcHealthRequest(service=service), GrpcHealthResponse
    )
    return response.status


async def test_host_lifecycle_initialize_healthy_serve_shutdown(
    model: str, request: pytest.FixtureRequest
) -> None:
    ns = (
        request.getfixturevalue("remote").namespace("kv")
        if model == "remote"
        else namespace("kv", "memstore", model)
    )
    async with running_proxy(proxy_config(ns)) as running:
        instance = running.proxy.host.route("kv").current
        assert instance is not None
        # Initialize → healthy: routed, health reported, the plugin says HEALTHY.
        assert instance.available
        assert instance.mode == model
        assert instance.health is not None
        assert instance.health.status == HealthCheckResponseStatus.HEALTHY
        assert await health(running, "prism.namespace/kv") == ServingStatus.SERVING
        assert (instance.pid is not None) == (model == "sidecar")
        # serve
        await running.execute("kv", "set", SetRequest(key="k", value=b"v"))
        got = result(await running.execute("kv", "get", GetRequest(key="k")), GetResponse)
        assert (got.found, got.value) == (True, b"v")
        client = instance.client
        pid = instance.pid
        # → Shutdown: a graceful stop sends every instance Shutdown.
        with trio.fail_after(10):
            await running.proxy.stop()
    assert not instance.available
    assert running.proxy.health.get("prism.namespace/kv") == ServingStatus.NOT_SERVING
    if model == "in_process":
        assert isinstance(client, InProcessClient)
        assert client.instance.state is State.CLOSED
    elif model == "sidecar":
        assert pid is not None
        with trio.fail_after(5):
            while pid_alive(pid):  # noqa: ASYNC110 - another process: nothing to wait on
                await trio.sleep(0.01)
    else:
        service: RemoteService = request.getfixturevalue("remote")
        with trio.fail_after(5):
            while "closed: Shutdown" not in service.log.read_text():  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert service.process.poll() is None  # the service outlives the proxy's session


async def test_host_lifecycle_key_value_operations(kv: Running) -> None:
    await kv.execute("kv", "set", SetRequest(key="user:1", value=b"ada"))
    await kv.execute("kv", "set", SetRequest(key="user:2", value=b"bob"))
    await kv.execute("kv", "set", SetRequest(key="order:1", value=b"x"))
    got = result(await kv.execute("kv", "get", GetRequest(key="user:1")), GetResponse)
    assert (got.found, got.value) == (True, b"ada")
    missing = result(await kv.execute("kv", "get", GetRequest(key="nope")), GetResponse)
    assert missing == GetResponse(found=False)
    listed = result(
        await kv.execute("kv", "list_keys", ListKeysRequest(prefix="user:")), ListKeysResponse
    )
    assert listed.keys == ["user:1", "user:2"]
    assert not listed.truncated
    deleted = result(await kv.execute("kv", "delete", DeleteRequest(key="user:1")), DeleteResponse)
    assert deleted.deleted
    exists = result(await kv.execute("kv", "exists", ExistsRequest(key="user:1")), ExistsResponse)
    assert not exists.exists
    exists = result(await kv.execute("kv", "exists", ExistsRequest(key="user:2")), ExistsResponse)
    assert exists.exists


async def test_host_lifecycle_ttl_expires(kv: Running) -> None:
    await kv.execute("kv", "set", SetRequest(key="short", value=b"1", ttl_ms=300))
    await kv.execute("kv", "set", SetRequest(key="long", value=b"2"))
    assert result(await kv.execute("kv", "get", GetRequest(key="short")), GetResponse).found
    await trio.sleep(0.5)
    assert not result(await kv.execute("kv", "get", GetRequest(key="short")), GetResponse).found
    assert result(await kv.execute("kv", "get", GetRequest(key="long")), GetResponse).found


async def test_host_lifecycle_raw_operations(kv: Running) -> None:
    blob = bytes(range(256)) * 64
    response = await kv.execute("kv", "set_raw", blob, metadata={"key": "blob"})
    assert response.raw_result == b""
    response = await kv.execute("kv", "get_raw", b"", metadata={"key": "blob"})
    assert response.raw_result == blob
    with pytest.raises(pg.NotFound, match="no key 'other'"):
        await kv.execute("kv", "get_raw", b"", metadata={"key": "other"})


async def test_host_lifecycle_plugin_errors_keep_their_status(kv: Running) -> None:
    with pytest.raises(pg.InvalidArgument, match="key must not be empty"):
        await kv.execute("kv", "get", GetRequest(key=""))
    with pytest.raises(pg.Unimplemented, match="no_such_op"):
        await kv.execute("kv", "no_such_op", GetRequest(key="a"))
    with pytest.raises(pg.NotFound, match="unknown namespace 'elsewhere'"):
        await kv.execute("elsewhere", "get", GetRequest(key="a"))


async def test_host_lifecycle_subscribe_receives_published_messages(kv: Running) -> None:
    async with kv.channel.stream(EXECUTE_STREAM, StreamResponse) as call:
        await call.send_message(
            StreamRequest(
                namespace="kv",
                operation="subscribe",
                typed_params=pack(SubscribeRequest(topic="t")),
            )
        )

        async def publish(payload: bytes) -> int:
            response = await kv.execute("kv", "publish", PublishRequest(topic="t", payload=payload))
            return result(response, PublishResponse).sequence

        # The subscription is in place once a warm-up message comes through.
        async with trio.open_nursery() as nursery:

            async def warm_up() -> None:
                while True:
                    await publish(b"warm-up")
                    await trio.sleep(0.05)

            nursery.start_soon(warm_up)
            with trio.fail_after(10):
                first: StreamResponse = await call.receive_message()
            nursery.cancel_scope.cancel()
        assert unpack(first.typed_result, Message).payload == b"warm-up"
        sequences = [await publish(p) for p in (b"a", b"b", b"c")]
        received: list[Message] = []
        with trio.fail_after(10):
            while len(received) < 3:
                response: StreamResponse = await call.receive_message()
                message = unpack(response.typed_result, Message)
                if message.payload != b"warm-up":
                    received.append(message)
        assert [m.payload for m in received] == [b"a", b"b", b"c"]
        assert [m.sequence for m in received] == sequences
        assert all(m.topic == "t" for m in received)


async def test_host_lifecycle_namespace_health_is_reported(kv: Running) -> None:
    assert await health(kv, "") == ServingStatus.SERVING
    assert await health(kv, "prism.proxy.v1.DataProxy") == ServingStatus.SERVING
    assert await health(kv, "prism.namespace/kv") == ServingStatus.SERVING


async def test_host_lifecycle_start_gives_up_after_startup_timeout() -> None:
    # Prints no handshake: the proxy does not wait for it beyond startup_timeout.
    command = (sys.executable, "-c", "import time; time.sleep(30)")
    ns = namespace("slow", "slow-plugin", "sidecar", command=command, startup_timeout=0.5)

    def check(exc: PluginStartFailed) -> bool:
        return (
            str(exc) == "namespace 'slow': plugin 'slow-plugin' did not become ready within 0.5 s"
        )

    started = trio.current_time()
    with pytest.RaisesGroup(
        pytest.RaisesExc(PluginStartFailed, check=check), flatten_subgroups=True
    ):
        async with running_proxy(proxy_config(ns)):
            pass
    assert trio.current_time() - started < 5


async def test_host_lifecycle_large_values_fit_through_every_hop(
    model: str, request: pytest.FixtureRequest
) -> None:
    # 15 MiB: under the proxy's max_message_size (16 MiB) with room for the envelopes. Every
    # hop (front door, proxy → plugin channel, plugin's server) allows it, both ways. (The
    # plugin's own value limit, 1 MiB by default, is raised to let it through.)
    config = {"max_value_bytes": 16 << 20}
    if model == "remote":
        ns = request.getfixturevalue("remote").namespace("kv", config=config)
    else:
        ns = namespace("kv", "memstore", model, config=config)
    value = bytes(range(256)) * (15 * 4096)
    options = pg.ChannelOptions(max_receive_message_size=16 << 20)
    async with (
        running_proxy(proxy_config(ns)) as kv,
        pg.open_channel(kv.target, options=options) as channel,
    ):
        await execute(channel, "kv", "set", SetRequest(key="big", value=value))
        got = result(await execute(channel, "kv", "get", GetRequest(key="big")), GetResponse)
    assert got.found
    assert got.value == value
