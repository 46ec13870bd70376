"""The rate limit stage: token buckets per namespace and per caller, RESOURCE_EXHAUSTED with a
google.rpc.RetryInfo that grpcio reads, counted in /metrics; refilled by Trio's clock."""

from __future__ import annotations

import grpc
import pytest
import trio
import trio.testing
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from host_testkit import EXECUTE, request
from traffic_testkit import flaky, flaky_proxy, running_proxy, sample, work

from prism.config.traffic import CallerRateLimitConfig, RateLimitConfig
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import ResourceExhausted, Status
from prism.proxy.metrics import Counter
from prism.proxy.ratelimit import STATUS_DETAILS, TokenBuckets, retry_status_details
from prism.proxy.request import Identity, RequestInfo


def retry_delay(error: ResourceExhausted | object) -> float:
    """The RetryInfo delay in a prism client error's grpc-status-details-bin trailer."""
    trailers = dict(getattr(error, "trailers", []))
    status = status_pb2.Status.FromString(trailers[STATUS_DETAILS])
    assert status.code == Status.RESOURCE_EXHAUSTED
    assert status.message == getattr(error, "message", None)
    (detail,) = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    return info.retry_delay.ToTimedelta().total_seconds()


async def test_ratelimit_exceeded_then_recovered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = flaky_proxy(flaky(rate_limit={"rate": 10, "burst": 2}))
    async with running_proxy(config) as running:
        assert await work(running) == b"ok"
        assert await work(running) == b"ok"  # the burst
        with pytest.raises(ResourceExhausted) as raised:
            await work(running)
        assert "rate limit exceeded for namespace 'flaky'" in raised.value.message
        delay = retry_delay(raised.value)
        assert 0 < delay <= 0.1  # one token every 0.1 s
        assert sample(running.proxy, "prism_rate_limited_total", namespace="flaky") == 1
        await trio.sleep(delay)
        assert await work(running) == b"ok"  # recovered: the bucket refilled
        with pytest.raises(ResourceExhausted):
            await work(running)  # ...by one token only
        await trio.sleep(1)
        assert [await work(running) for _ in range(2)] == [b"ok", b"ok"]  # full again (burst)
        assert sample(running.proxy, "prism_rate_limited_total", namespace="flaky") == 2


async def test_ratelimit_is_per_namespace(autojump_clock: trio.testing.MockClock) -> None:
    config = flaky_proxy(flaky("limited", rate_limit={"rate": 1}), flaky("free"))
    async with running_proxy(config) as running:
        assert await work(running, "limited") == b"ok"
        with pytest.raises(ResourceExhausted):
            await work(running, "limited")
        assert [await work(running, "free") for _ in range(5)] == [b"ok"] * 5


async def test_ratelimit_retry_info_is_read_by_grpcio() -> None:
    # Real time, a real grpcio client: one call a thousand seconds, so the second is refused.
    config = flaky_proxy(flaky(rate_limit={"rate": 0.001, "burst": 1}))
    async with running_proxy(config) as running:

        def call_twice() -> grpc.RpcError:
            with grpc.insecure_channel(running.target) as channel:
                execute = channel.unary_unary(EXECUTE)
                execute(bytes(request("flaky", "work")), timeout=30)
                with pytest.raises(grpc.RpcError) as raised:
                    execute(bytes(request("flaky", "work")), timeout=30)
                return raised.value

        with trio.fail_after(60):
            error = await trio.to_thread.run_sync(call_twice)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    (detail,) = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    assert 900 < info.retry_delay.ToTimedelta().total_seconds() <= 1000


def test_ratelimit_status_details_match_protobuf() -> None:
    details = retry_status_details(Status.RESOURCE_EXHAUSTED, "slow down: ü", 2.25)
    status = status_pb2.Status.FromString(details)
    assert (status.code, status.message) == (8, "slow down: ü")
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (2, 250_000_000)


def caller(subject: str) -> RequestInfo:
    info = RequestInfo(PeerInfo("127.0.0.1:1", "tcp"), 0.0)
    info.identity = Identity(subject, "jwt")
    return info


async def test_ratelimit_per_caller_buckets_are_separate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rejected = Counter()
    limit = TokenBuckets("kv", rejected, per_caller=CallerRateLimitConfig(rate=1, burst=2))
    alice, bob = caller("alice"), caller("bob")
    limit.check(alice)
    limit.check(alice)
    with pytest.raises(ResourceExhausted) as raised:
        limit.check(alice)
    assert "caller limit: 1 calls/s" in raised.value.message
    limit.check(bob)  # bob's bucket is his own
    limit.check(bob)
    assert rejected.value == 1
    await trio.sleep(1)
    limit.check(alice)


async def test_ratelimit_namespace_bucket_is_shared_and_refunds_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rejected = Counter()
    limit = TokenBuckets(
        "kv",
        rejected,
        shared=RateLimitConfig(rate=1, burst=2),
        per_caller=CallerRateLimitConfig(rate=1, burst=2),
    )
    limit.check(caller("alice"))
    limit.check(caller("bob"))
    with pytest.raises(ResourceExhausted) as raised:
        limit.check(caller("carol"))  # the namespace's bucket is empty
    assert "namespace limit" in raised.value.message
    await trio.sleep(1)
    limit.check(caller("carol"))  # carol's own token was given back: she has two
    await trio.sleep(1)
    limit.check(caller("carol"))
    assert rejected.value == 1


async def test_ratelimit_tracks_a_bounded_number_of_callers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = TokenBuckets(
        "kv", Counter(), per_caller=CallerRateLimitConfig(rate=1, burst=1, max_callers=100)
    )
    limit.check(caller("alice"))
    for n in range(10_000):  # a flood of subjects, each seen once...
        limit.check(caller(f"minted-{n}"))
        if n % 50 == 0:
            with pytest.raises(ResourceExhausted):
                limit.check(caller("alice"))  # ...while alice keeps calling: she stays tracked
    assert limit.callers == 100
