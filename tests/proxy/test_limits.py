"""The concurrency limit stage: a cap of calls in flight per namespace, a bounded wait queue
with a timeout, RESOURCE_EXHAUSTED at once beyond it, a separate cap for streams, and no permit
left behind by a call cancelled while it waited."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from traffic_plugins import FlakyPlugin
from traffic_testkit import flaky, flaky_proxy, running_proxy, sample, work

from prism.config.traffic import ConcurrencyConfig
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import DeadlineExceeded, GrpcError, ResourceExhausted
from prism.proxy.limits import ConcurrencyLimit
from prism.proxy.metrics import ProxyMetrics
from prism.proxy.request import RequestInfo


async def until(condition: Callable[[], bool]) -> None:
    """Until the server's tasks have got as far as ``condition`` says."""
    with trio.fail_after(30):
        while not condition():  # noqa: ASYNC110 - the proxy's own tasks
            await trio.sleep(0.001)


async def test_limits_queue_full_then_queue_timeout_then_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    concurrency = {"max_in_flight": 1, "max_queue": 1, "queue_timeout": 2}
    config = flaky_proxy(flaky(concurrency=concurrency))
    async with running_proxy(config) as running, trio.open_nursery() as nursery:
        limiter = running.proxy.pipeline.namespaces["flaky"].limiter
        assert isinstance(limiter, ConcurrencyLimit)
        plugin = FlakyPlugin.instances[-1]
        results: dict[str, bytes | GrpcError] = {}

        async def call(name: str, operation: str) -> None:
            try:
                results[name] = await work(running, operation=operation)
            except GrpcError as exc:
                results[name] = exc

        nursery.start_soon(call, "held", "hold")
        await until(lambda: plugin.entered == 1)
        nursery.start_soon(call, "queued", "work")
        await until(lambda: len(limiter.unary.waiters) == 1)
        with pytest.raises(ResourceExhausted) as full:
            await work(running)  # one in flight, one waiting: refused at once
        assert "queue full" in full.value.message
        await until(lambda: "queued" in results)  # two seconds on, still no permit
        queued = results["queued"]
        assert isinstance(queued, ResourceExhausted)
        assert "queue timeout" in queued.message
        assert plugin.calls == 0  # neither reached the plugin
        plugin.gate.set()
        await until(lambda: "held" in results)
        assert results["held"] == b"released"
        assert await work(running) == b"ok"  # the permit came back
        assert limiter.unary.taken == 0
        proxy = running.proxy
        rejected = "prism_concurrency_rejected_total"
        assert sample(proxy, rejected, namespace="flaky", reason="queue_full") == 1
        assert sample(proxy, rejected, namespace="flaky", reason="queue_timeout") == 1
        assert sample(proxy, "prism_queue_wait_seconds_count", namespace="flaky") == 2


async def test_limits_queued_call_gets_the_released_permit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    concurrency = {"max_in_flight": 1, "max_queue": 4, "queue_timeout": 60}
    config = flaky_proxy(flaky(concurrency=concurrency))
    async with running_proxy(config) as running, trio.open_nursery() as nursery:
        limiter = running.proxy.pipeline.namespaces["flaky"].limiter
        assert isinstance(limiter, ConcurrencyLimit)
        plugin = FlakyPlugin.instances[-1]
        done: list[bytes] = []

        async def held() -> None:
            done.append(await work(running, operation="hold"))

        nursery.start_soon(held)
        await until(lambda: plugin.entered == 1)
        await trio.sleep(5)  # the queued call waits this long
        nursery.start_soon(held)
        await until(lambda: len(limiter.unary.waiters) == 1)
        await trio.sleep(5)
        plugin.gate.set()  # the first ends; its permit goes to the waiter, which ends too
        await until(lambda: len(done) == 2)
        assert done == [b"released", b"released"]
        assert limiter.unary.taken == 0
        # One call waited ~5 s for its permit: in the 5 s bucket, not below 1 s.
        proxy = running.proxy
        wait = "prism_queue_wait_seconds_bucket"
        assert sample(proxy, wait, namespace="flaky", le="1.0") == 1
        assert sample(proxy, wait, namespace="flaky", le="5.0") == 1
        assert sample(proxy, wait, namespace="flaky", le="+Inf") == 2


async def test_limits_cancellation_while_queued_leaves_no_permit_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    concurrency = {"max_in_flight": 1, "max_queue": 8, "queue_timeout": 60}
    config = flaky_proxy(flaky(concurrency=concurrency))
    async with running_proxy(config) as running, trio.open_nursery() as nursery:
        limiter = running.proxy.pipeline.namespaces["flaky"].limiter
        assert isinstance(limiter, ConcurrencyLimit)
        plugin = FlakyPlugin.instances[-1]
        nursery.start_soon(work, running, "flaky", "hold")
        await until(lambda: plugin.entered == 1)
        # Queued callers whose deadline passes (the client's own), and one that gives up.
        for _ in range(3):
            with pytest.raises(DeadlineExceeded):
                await work(running, timeout=1)
        # The server's side of each call has its own deadline, from the moment the call arrived:
        # it may leave the queue a little after the client gave up. Wait for that, so the waiter
        # counted below is the quitter's and not the last timed-out call's.
        await until(lambda: not limiter.unary.waiters)
        async with trio.open_nursery() as quitter:
            quitter.start_soon(work, running)
            await until(lambda: len(limiter.unary.waiters) == 1)
            quitter.cancel_scope.cancel()  # the client resets its stream
        await until(lambda: not limiter.unary.waiters)
        assert limiter.unary.taken == 1  # only the held call's
        plugin.gate.set()
        await until(lambda: limiter.unary.taken == 0)
        # The cap is whole again: the next call is served at once.
        assert await work(running) == b"ok"
        assert plugin.calls == 1


def info(stream: bool = False) -> RequestInfo:
    return RequestInfo(PeerInfo("127.0.0.1:1", "tcp"), 0.0, stream=stream)


async def test_limits_streams_have_their_own_cap() -> None:
    metrics = ProxyMetrics().add_namespace("kv")
    config = ConcurrencyConfig(max_in_flight=1, max_streams=2, max_queue=0)
    limiter = ConcurrencyLimit("kv", config, metrics)
    assert limiter.try_acquire(info())
    assert not limiter.try_acquire(info())  # unary cap reached...
    assert limiter.try_acquire(info(stream=True))  # ...streams are not affected
    assert limiter.try_acquire(info(stream=True))
    assert not limiter.try_acquire(info(stream=True))
    with pytest.raises(ResourceExhausted) as raised:
        await limiter.acquire(info(stream=True))  # no queue: refused at once
    assert "2 streams in flight" in raised.value.message
    limiter.release(info(stream=True))
    assert limiter.try_acquire(info(stream=True))
    assert not limiter.try_acquire(info())


async def test_limits_uncapped_streams_pass_when_unary_calls_are_capped() -> None:
    metrics = ProxyMetrics().add_namespace("kv")
    limiter = ConcurrencyLimit("kv", ConcurrencyConfig(max_in_flight=1), metrics)
    assert limiter.try_acquire(info())
    assert all(limiter.try_acquire(info(stream=True)) for _ in range(1000))


async def test_limits_a_new_call_does_not_overtake_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = ProxyMetrics().add_namespace("kv")
    limiter = ConcurrencyLimit("kv", ConcurrencyConfig(max_in_flight=1, max_queue=2), metrics)
    assert limiter.try_acquire(info())
    order: list[str] = []
    async with trio.open_nursery() as nursery:

        async def waiter(name: str) -> None:
            await limiter.acquire(info())
            order.append(name)

        nursery.start_soon(waiter, "first")
        await trio.testing.wait_all_tasks_blocked()
        limiter.release(info())  # handed to "first": the count stays at one
        assert not limiter.try_acquire(info())  # a newcomer cannot take it meanwhile
    assert order == ["first"]
    assert limiter.unary.taken == 1
