"""The circuit breaker stage, over a real proxy and a plugin that fails on demand, on Trio's
autojump clock: it opens after consecutive failures or a failure rate, fails fast without
calling the plugin, lets a probe through once the cool-down is over, closes once the plugin
recovers, counts only the statuses that mean the backend is sick, and starts closed on a new
instance (hot reload)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from google.rpc import error_details_pb2, status_pb2
from traffic_plugins import FlakyPlugin
from traffic_testkit import flaky, flaky_proxy, running_proxy, sample, work

from prism.grpc.wire.status import DeadlineExceeded, GrpcError, Status, Unavailable
from prism.proxy.ratelimit import STATUS_DETAILS

BREAKER = {"consecutive_failures": 3, "open_seconds": 5}


def state(running: object, ns: str = "flaky") -> float | None:
    return sample(running.proxy, "prism_breaker_state", namespace=ns)  # type: ignore[attr-defined]


def transitions(running: object, to: str) -> float | None:
    return sample(
        running.proxy,  # type: ignore[attr-defined]
        "prism_breaker_transitions_total",
        namespace="flaky",
        state=to,
    )


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(30):
        while not condition():  # noqa: ASYNC110 - the proxy's own tasks
            await trio.sleep(0.001)


async def test_breaker_opens_fails_fast_half_opens_and_closes_once_the_plugin_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_proxy(flaky_proxy(flaky(breaker=BREAKER))) as running:
        plugin = FlakyPlugin.instances[-1]
        assert await work(running) == b"ok"
        assert state(running) == 0  # closed
        plugin.failing = Status.UNAVAILABLE
        for _ in range(3):
            with pytest.raises(Unavailable, match="the backend is down"):
                await work(running)
        assert plugin.calls == 4
        # Open: fail fast, with the reason, and the plugin is not called.
        with pytest.raises(Unavailable) as raised:
            await work(running)
        assert raised.value.message == (
            "circuit breaker open for namespace 'flaky' after 3 consecutive failures; retry in 5 s"
        )
        details = status_pb2.Status.FromString(dict(raised.value.trailers)[STATUS_DETAILS])
        retry = error_details_pb2.RetryInfo()
        assert details.details[0].Unpack(retry)
        assert retry.retry_delay.seconds == 5
        assert plugin.calls == 4
        assert (state(running), transitions(running, "open")) == (2, 1)
        # Half-open after the cool-down: one probe goes through, fails, and it opens again.
        await trio.sleep(5)
        with pytest.raises(Unavailable, match="the backend is down"):
            await work(running)
        assert plugin.calls == 5
        with pytest.raises(Unavailable, match="after a failed probe call; retry in 5 s"):
            await work(running)
        assert plugin.calls == 5
        assert (transitions(running, "half_open"), transitions(running, "open")) == (1, 2)
        # The plugin recovers: the next probe succeeds and the breaker closes.
        plugin.failing = None
        await trio.sleep(5)
        assert await work(running) == b"ok"
        assert [await work(running) for _ in range(5)] == [b"ok"] * 5
        assert plugin.calls == 11
        assert (state(running), transitions(running, "closed")) == (0, 1)


async def test_breaker_half_open_lets_a_limited_number_of_probes_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        running_proxy(flaky_proxy(flaky(breaker=BREAKER))) as running,
        trio.open_nursery() as nursery,
    ):
        plugin = FlakyPlugin.instances[-1]
        plugin.failing = Status.INTERNAL
        for _ in range(3):
            with pytest.raises(GrpcError):
                await work(running)
        await trio.sleep(5)
        held: list[bytes] = []

        async def probe() -> None:
            held.append(await work(running, operation="hold"))

        nursery.start_soon(probe)
        await until(lambda: plugin.entered == 1)
        with pytest.raises(Unavailable, match="a probe call is testing the plugin"):
            await work(running)
        assert state(running) == 1  # half-open
        plugin.gate.set()
        await until(lambda: held == [b"released"])
        plugin.failing = None
        assert await work(running) == b"ok"
        assert state(running) == 0


async def test_breaker_probe_that_does_not_answer_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        running_proxy(flaky_proxy(flaky(breaker=BREAKER))) as running,
        trio.open_nursery() as nursery,
    ):
        plugin = FlakyPlugin.instances[-1]
        plugin.failing = Status.UNAVAILABLE
        for _ in range(3):
            with pytest.raises(Unavailable):
                await work(running)
        await trio.sleep(5)
        nursery.start_soon(work, running, "flaky", "hold")  # a probe that hangs
        await until(lambda: plugin.entered == 1)
        with pytest.raises(Unavailable, match="a probe call is testing the plugin"):
            await work(running)
        await trio.sleep(5)  # the hung probe has had open_seconds: another may go
        plugin.failing = None
        assert await work(running) == b"ok"
        assert state(running) == 0
        plugin.gate.set()


async def test_breaker_opens_on_the_failure_rate(autojump_clock: trio.testing.MockClock) -> None:
    breaker = {"consecutive_failures": 100, "failure_rate": 0.5, "min_calls": 10, "window": 10}
    async with running_proxy(flaky_proxy(flaky(breaker=breaker))) as running:
        plugin = FlakyPlugin.instances[-1]
        for n in range(11):  # every other call fails: 6 of 11
            plugin.failing = Status.UNAVAILABLE if n % 2 == 0 else None
            with pytest.raises(Unavailable) if n % 2 == 0 else _nothing():
                await work(running)
        with pytest.raises(Unavailable, match="after 6 failures in 11 calls"):
            await work(running)
        assert plugin.calls == 11


async def test_breaker_failures_slide_out_of_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = {"consecutive_failures": 100, "failure_rate": 0.5, "min_calls": 4, "window": 10}
    async with running_proxy(flaky_proxy(flaky(breaker=breaker))) as running:
        plugin = FlakyPlugin.instances[-1]
        plugin.failing = Status.UNAVAILABLE
        for _ in range(3):  # 3 failures in 3 calls: not enough calls yet
            with pytest.raises(Unavailable):
                await work(running)
        await trio.sleep(11)  # ...and now they are older than the window
        plugin.failing = None
        for _ in range(3):
            assert await work(running) == b"ok"
        plugin.failing = Status.UNAVAILABLE
        with pytest.raises(Unavailable, match="the backend is down"):
            await work(running)  # 1 failure in 4 calls: still closed
        assert state(running) == 0


@pytest.mark.parametrize("status", [Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ABORTED])
async def test_breaker_ignores_statuses_that_are_the_callers_business(
    autojump_clock: trio.testing.MockClock, status: Status
) -> None:
    async with running_proxy(flaky_proxy(flaky(breaker=BREAKER))) as running:
        plugin = FlakyPlugin.instances[-1]
        plugin.failing = status
        for _ in range(10):
            with pytest.raises(GrpcError) as raised:
                await work(running)
            assert raised.value.status == status
        assert plugin.calls == 10
        assert state(running) == 0


async def test_breaker_counts_deadlines_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    async with running_proxy(flaky_proxy(flaky(breaker=BREAKER))) as running:
        plugin = FlakyPlugin.instances[-1]
        for _ in range(3):
            with pytest.raises(DeadlineExceeded):
                await work(running, operation="sleep", params=b"60", timeout=1)
        await until(lambda: state(running) == 2)
        with pytest.raises(Unavailable, match="circuit breaker open"):
            await work(running)
        assert plugin.calls == 0


async def test_breaker_new_instance_after_a_hot_reload_starts_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_proxy(flaky_proxy(flaky(breaker=BREAKER))) as running:
        old = FlakyPlugin.instances[-1]
        old.failing = Status.UNAVAILABLE
        for _ in range(3):
            with pytest.raises(Unavailable):
                await work(running)
        with pytest.raises(Unavailable, match="circuit breaker open"):
            await work(running)
        await running.proxy.host.reload("flaky")
        new = FlakyPlugin.instances[-1]
        assert new is not old
        assert await work(running) == b"ok"  # the new instance's breaker is closed
        assert (old.calls, new.calls) == (3, 1)
        assert state(running) == 0  # the gauge follows the instance serving now


async def test_breaker_can_be_turned_off(autojump_clock: trio.testing.MockClock) -> None:
    config = flaky_proxy(flaky(breaker={"enabled": False, "consecutive_failures": 1}))
    async with running_proxy(config) as running:
        plugin = FlakyPlugin.instances[-1]
        plugin.failing = Status.UNAVAILABLE
        for _ in range(20):
            with pytest.raises(Unavailable, match="the backend is down"):
                await work(running)
        assert plugin.calls == 20
        assert state(running) is None


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_breaker_does_not_hold_back_a_sidecar_that_serves_again_after_a_crash() -> None:
    """Calls while the crashed sidecar restarts get the route's own UNAVAILABLE and never reach
    a plugin: they count in no breaker, so the namespace serves as soon as the host routes to
    the restarted plugin (the bench measured 5 s more, an open breaker's cool-down, before)."""
    import os
    import signal

    from host_testkit import namespace

    from prism._proto.prism.data.v1 import GetRequest

    ns = namespace("kv", mode="sidecar", health_interval=0.2)
    ns = ns.model_copy(
        update={
            "access": ns.access.model_copy(update={"anonymous": True}),
            "traffic": ns.traffic.model_copy(
                update={
                    "breaker": ns.traffic.breaker.model_copy(
                        update={"consecutive_failures": 2, "open_seconds": 300}
                    )
                }
            ),
        }
    )
    async with running_proxy(flaky_proxy(ns)) as running:
        instance = running.proxy.host.route("kv").current
        assert instance is not None
        assert instance.pid is not None
        await running.execute("kv", "get", GetRequest(key="k"))
        os.kill(instance.pid, signal.SIGKILL)
        refusals: list[str] = []
        with trio.fail_after(60):
            while True:
                try:
                    await running.execute("kv", "get", GetRequest(key="k"))
                except Unavailable as exc:
                    refusals.append(exc.message)
                    if "circuit breaker" in exc.message:
                        break  # held back: what this test is about
                    await trio.sleep(0.005)
                    continue
                if refusals:  # served again (2 refusals would open a breaker that counted them)
                    break
                await trio.sleep(0.005)  # served before the crash was noticed: call again
        assert len(refusals) >= 2
        assert not [m for m in refusals if "circuit breaker" in m]
        assert state(running, "kv") == 0  # closed
