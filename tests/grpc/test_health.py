from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import trio
import trio.testing

from prism import grpc as pg
from prism._proto.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from prism.grpc.health import Health, HealthState, ServingStatus

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


class FakeCall:
    """Stands in for ``pg.ServerCall``: what the handler sends goes into a channel."""

    def __init__(self) -> None:
        self.sent_to, self.sent = trio.open_memory_channel[Any](100)

    async def send_message(self, message: Any) -> None:
        await self.sent_to.send(message)

    def as_call(self) -> pg.ServerCall:
        return cast("pg.ServerCall", self)


async def watched(
    service: Health, name: str, nursery: trio.Nursery
) -> trio.MemoryReceiveChannel[Any]:
    call = FakeCall()

    async def watch() -> None:
        with call.sent_to:
            await service.watch(HealthCheckRequest(service=name), call.as_call())

    nursery.start_soon(watch)
    return call.sent


def statuses(received: trio.MemoryReceiveChannel[Any]) -> list[ServingStatus]:
    out = []
    while True:
        try:
            out.append(received.receive_nowait().status)
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


# -- HealthState ------------------------------------------------------------------------------


def test_health_state_whole_server_starts_serving() -> None:
    assert HealthState().get("") == ServingStatus.SERVING


def test_health_state_unknown_service_is_none() -> None:
    assert HealthState().get("pkg.Nope") is None


def test_health_state_set_and_get() -> None:
    state = HealthState({"pkg.A": ServingStatus.NOT_SERVING})
    assert state.get("pkg.A") == ServingStatus.NOT_SERVING
    state.set("pkg.A", ServingStatus.SERVING)
    state.set("", ServingStatus.NOT_SERVING)
    assert state.get("pkg.A") == ServingStatus.SERVING
    assert state.get("") == ServingStatus.NOT_SERVING


def test_health_state_shutdown_is_not_serving_for_good() -> None:
    state = HealthState({"pkg.A": ServingStatus.SERVING})
    state.shutdown()
    state.set("pkg.A", ServingStatus.SERVING)
    assert state.get("pkg.A") == ServingStatus.NOT_SERVING
    assert state.get("") == ServingStatus.NOT_SERVING


# -- handlers, called directly ------------------------------------------------------------------


async def test_health_check_returns_status() -> None:
    health = Health(HealthState({"pkg.A": ServingStatus.NOT_SERVING}))
    reply = await health.check(HealthCheckRequest(service="pkg.A"), FakeCall().as_call())
    assert reply.status == ServingStatus.NOT_SERVING
    reply = await health.check(HealthCheckRequest(), FakeCall().as_call())
    assert reply.status == ServingStatus.SERVING


async def test_health_check_unknown_service_is_not_found() -> None:
    with pytest.raises(pg.NotFound, match=r"pkg\.Nope"):
        await Health().check(HealthCheckRequest(service="pkg.Nope"), FakeCall().as_call())


async def test_health_watch_sends_current_status_then_each_change(nursery: trio.Nursery) -> None:
    health = Health(HealthState({"pkg.A": ServingStatus.SERVING}))
    received = await watched(health, "pkg.A", nursery)
    await trio.testing.wait_all_tasks_blocked()
    assert statuses(received) == [ServingStatus.SERVING]

    health.state.set("pkg.A", ServingStatus.NOT_SERVING)
    await trio.testing.wait_all_tasks_blocked()
    health.state.set("pkg.A", ServingStatus.NOT_SERVING)  # no change, nothing sent
    health.state.set("pkg.B", ServingStatus.NOT_SERVING)  # another service
    await trio.testing.wait_all_tasks_blocked()
    health.state.set("pkg.A", ServingStatus.SERVING)
    await trio.testing.wait_all_tasks_blocked()
    assert statuses(received) == [ServingStatus.NOT_SERVING, ServingStatus.SERVING]


async def test_health_watch_sends_only_the_latest_of_quick_changes(nursery: trio.Nursery) -> None:
    health = Health()
    received = await watched(health, "", nursery)
    await trio.testing.wait_all_tasks_blocked()
    health.state.set("", ServingStatus.NOT_SERVING)
    health.state.set("", ServingStatus.SERVING)
    await trio.testing.wait_all_tasks_blocked()
    # The watcher never saw NOT_SERVING: SERVING is where it left off, so nothing is resent.
    assert statuses(received) == [ServingStatus.SERVING]


async def test_health_watch_unknown_service_then_registered(nursery: trio.Nursery) -> None:
    health = Health()
    received = await watched(health, "pkg.Later", nursery)
    await trio.testing.wait_all_tasks_blocked()
    assert statuses(received) == [ServingStatus.SERVICE_UNKNOWN]
    health.state.set("pkg.Later", ServingStatus.SERVING)
    await trio.testing.wait_all_tasks_blocked()
    assert statuses(received) == [ServingStatus.SERVING]


async def test_health_watch_every_watcher_sees_the_change(nursery: trio.Nursery) -> None:
    health = Health()
    watchers = [await watched(health, "", nursery) for _ in range(3)]
    await trio.testing.wait_all_tasks_blocked()
    health.state.set("", ServingStatus.NOT_SERVING)
    await trio.testing.wait_all_tasks_blocked()
    for received in watchers:
        assert statuses(received) == [ServingStatus.SERVING, ServingStatus.NOT_SERVING]


async def test_health_watch_ends_unavailable_on_shutdown(nursery: trio.Nursery) -> None:
    health = Health(HealthState({"pkg.A": ServingStatus.SERVING}))
    call = FakeCall()
    ended: list[pg.GrpcError] = []

    async def watch() -> None:
        try:
            await health.watch(HealthCheckRequest(service="pkg.A"), call.as_call())
        except pg.GrpcError as exc:
            ended.append(exc)

    nursery.start_soon(watch)
    await trio.testing.wait_all_tasks_blocked()
    health.state.shutdown()
    await trio.testing.wait_all_tasks_blocked()
    assert statuses(call.sent) == [ServingStatus.SERVING, ServingStatus.NOT_SERVING]
    assert [e.status for e in ended] == [pg.Status.UNAVAILABLE]
    assert "shutting down" in ended[0].message


async def test_health_watch_after_shutdown_sends_status_then_ends() -> None:
    health = Health()
    health.state.shutdown()
    call = FakeCall()
    with pytest.raises(pg.Unavailable):
        await health.watch(HealthCheckRequest(), call.as_call())
    assert statuses(call.sent) == [ServingStatus.NOT_SERVING]


async def test_health_watch_stops_when_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    health = Health()
    with trio.move_on_after(1) as scope:
        await health.watch(HealthCheckRequest(), FakeCall().as_call())
    assert scope.cancelled_caught


# -- over the network, through prism's own server and channel --------------------------------


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[HealthState, pg.Channel]]:
    state = HealthState({"pkg.A": ServingStatus.SERVING})
    server = pg.Server([Health(state)])
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    async with pg.open_channel(f"{host}:{port}") as channel:
        yield state, channel


async def test_health_check_over_network(served: tuple[HealthState, pg.Channel]) -> None:
    _, channel = served
    reply = await channel.unary_unary(CHECK, HealthCheckRequest(), HealthCheckResponse)
    assert reply.status == ServingStatus.SERVING
    reply = await channel.unary_unary(
        CHECK, HealthCheckRequest(service="pkg.A"), HealthCheckResponse
    )
    assert reply.status == ServingStatus.SERVING


async def test_health_check_over_network_unknown_is_not_found(
    served: tuple[HealthState, pg.Channel],
) -> None:
    _, channel = served
    with pytest.raises(pg.NotFound) as info:
        await channel.unary_unary(CHECK, HealthCheckRequest(service="pkg.X"), HealthCheckResponse)
    assert info.value.status is pg.Status.NOT_FOUND


async def test_health_watch_over_network(served: tuple[HealthState, pg.Channel]) -> None:
    state, channel = served
    with trio.fail_after(5):
        async with channel.stream(WATCH, HealthCheckResponse) as call:
            await call.send_message(HealthCheckRequest(service="pkg.A"))
            await call.end()
            assert (await call.receive_message()).status == ServingStatus.SERVING
            state.set("pkg.A", ServingStatus.NOT_SERVING)
            assert (await call.receive_message()).status == ServingStatus.NOT_SERVING
            state.shutdown()
            with pytest.raises(pg.Unavailable):
                await call.receive_message()
