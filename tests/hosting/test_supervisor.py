"""The one restart loop, driven with attempts written here and Trio's autojump clock: the
delays are what the policy says, whatever the machine's speed."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from prism.hosting.client import PluginClient
from prism.hosting.instance import Instance, NoEvents
from prism.hosting.supervisor import (
    SIDECAR_RESTART_BACKOFF,
    Backoff,
    BackoffPolicy,
    PluginFailed,
    PluginUnreachable,
    supervise,
)

POLICY = BackoffPolicy(initial=0.1, maximum=0.4, reset_after=10.0)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_backoff_doubles_up_to_maximum() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.1, maximum=5.0, multiplier=2.0))

    delays = [backoff.next_delay(ran_for=0.5) for _ in range(8)]

    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_backoff_starts_over_after_stable_run() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.1, maximum=5.0, reset_after=10.0))
    for _ in range(5):
        backoff.next_delay(ran_for=1.0)

    assert backoff.next_delay(ran_for=10.0) == pytest.approx(0.1)
    assert backoff.next_delay(ran_for=0.0) == pytest.approx(0.2)


def test_backoff_first_at_once_restarts_at_once_then_backs_off() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.1, maximum=0.4, first_at_once=True))

    delays = [backoff.next_delay(ran_for=0.5) for _ in range(5)]

    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.4])  # a crash loop still backs off
    assert backoff.next_delay(ran_for=10.0) == 0.0  # after a stable run: at once again
    assert backoff.next_delay(ran_for=0.0) == pytest.approx(0.1)


class Client(PluginClient):
    """Stands in for a plugin connection; the loop only routes to it."""

    async def initialize(self, request):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def health_check(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def execute(self, request: bytes) -> bytes:
        return request

    async def execute_stream(self, receive, send):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def shutdown(self, grace, reason):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Script:
    """Attempts that serve for ``serve_for[n]`` seconds and then fail (None: forever); the
    instance's state is recorded at every change."""

    def __init__(self, instance: Instance, serve_for: list[float | None], fail_start: int = 0):
        self.instance = instance
        self.serve_for = serve_for
        self.fail_start = fail_start  # this many attempts fail before serving
        self.starts: list[float] = []
        self.failures_at: list[float] = []

    async def attempt(self, number: int, *, task_status: trio.TaskStatus[None]) -> None:
        self.starts.append(trio.current_time())
        if number <= self.fail_start:
            raise PluginFailed(f"attempt {number} cannot start")
        self.instance.up(Client())
        task_status.started()
        duration = self.serve_for[min(number - 1 - self.fail_start, len(self.serve_for) - 1)]
        if duration is None:
            await trio.sleep_forever()
        await trio.sleep(duration)
        self.failures_at.append(trio.current_time())
        raise PluginFailed(f"attempt {number} crashed")


class RecordingEvents(NoEvents):
    def __init__(self) -> None:
        self.restarted: list[str] = []

    def plugin_restarted(self, namespace: str) -> None:
        self.restarted.append(namespace)


def changes(instance: Instance) -> list[tuple[bool, str]]:
    seen: list[tuple[bool, str]] = []
    instance._on_change = lambda i: seen.append((i.available, i.down_reason))
    return seen


async def restart_gaps(script: Script, backoff: BackoffPolicy, run_for: float) -> list[float]:
    """Supervise ``script`` for ``run_for`` seconds; the time from each failure to the next
    attempt's start."""
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: supervise(
                script.attempt,
                script.instance,
                what="kv",
                startup_timeout=5,
                backoff=backoff,
                task_status=task_status,
            )
        )
        await trio.sleep(run_for)
        nursery.cancel_scope.cancel()
    return [
        start - failed for failed, start in zip(script.failures_at, script.starts[1:], strict=False)
    ]


async def test_supervise_restarts_with_backoff_after_each_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = RecordingEvents()
    instance = Instance("kv", "sidecar", 1, events=events)
    seen = changes(instance)
    script = Script(instance, [1.0, 1.0, 1.0, None])
    gaps = await restart_gaps(script, POLICY, run_for=20)
    assert gaps == pytest.approx([0.1, 0.2, 0.4])
    assert instance.restarts == 3
    assert events.restarted == ["kv", "kv", "kv"]  # the host's events heard of each
    # Down at once with the reason, up again: every change reached the instance, in order.
    assert seen[:4] == [
        (True, "starting"),
        (False, "attempt 1 crashed"),
        (True, "attempt 1 crashed"),
        (False, "attempt 2 crashed"),
    ]
    assert instance.available


async def test_supervise_sidecar_backoff_restarts_an_isolated_crash_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    instance = Instance("kv", "sidecar", 1)
    # Crashes after a stable run (past reset_after), then a crash loop, then serving.
    script = Script(instance, [20.0, 1.0, 1.0, None])
    gaps = await restart_gaps(script, SIDECAR_RESTART_BACKOFF, run_for=40)
    assert gaps == pytest.approx([0.0, 0.1, 0.2])
    assert instance.restarts == 3
    assert instance.available


async def test_supervise_first_start_failure_is_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    instance = Instance("kv", "sidecar", 1)
    script = Script(instance, [None], fail_start=1)
    with pytest.RaisesGroup(
        pytest.RaisesExc(PluginFailed, match="attempt 1 cannot start"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: supervise(
                    script.attempt, instance, what="kv", startup_timeout=5, task_status=task_status
                )
            )
    assert len(script.starts) == 1


async def test_supervise_start_unreachable_reports_started_and_keeps_trying(
    autojump_clock: trio.testing.MockClock,
) -> None:
    instance = Instance("far", "remote", 1)
    attempts: list[float] = []

    async def attempt(number: int, *, task_status: trio.TaskStatus[None]) -> None:
        attempts.append(trio.current_time())
        if number < 5:
            raise PluginUnreachable("cannot reach the remote plugin at x: connection refused")
        instance.up(Client())
        task_status.started()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: supervise(
                attempt,
                instance,
                what="far",
                startup_timeout=5,
                backoff=BackoffPolicy(initial=0.05, maximum=0.1),
                start_unreachable=True,
                task_status=task_status,
            )
        )
        assert not instance.available
        assert "connection refused" in instance.down_reason
        with trio.fail_after(5):
            while not instance.available:  # noqa: ASYNC110 - the loop's own retries
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == pytest.approx([0.05, 0.1, 0.1, 0.1])  # capped


async def test_supervise_restarts_an_attempt_that_hangs_while_starting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    instance = Instance("kv", "sidecar", 1)

    async def attempt(number: int, *, task_status: trio.TaskStatus[None]) -> None:
        if number == 2:
            await trio.sleep_forever()  # e.g. hangs in Initialize
        instance.up(Client())
        task_status.started()
        if number == 1:
            raise PluginFailed("crashed")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: supervise(
                attempt, instance, what="kv", startup_timeout=3, task_status=task_status
            )
        )
        with trio.fail_after(30):
            while instance.restarts < 2 or not instance.available:  # noqa: ASYNC110
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert instance.restarts == 2


async def test_supervise_returns_once_the_instance_is_retiring(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    instance = Instance("kv", "sidecar", 1)
    script = Script(instance, [1.0])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: supervise(
                    script.attempt, instance, what="kv", startup_timeout=5, task_status=task_status
                )
            )
            instance.retiring = True  # it was sent Shutdown: its end is expected
    assert len(script.starts) == 1
    assert not instance.available
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_supervise_logs_the_downtime_when_serving_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    instance = Instance("kv", "sidecar", 1)
    script = Script(instance, [1.0, None])
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: supervise(
                script.attempt,
                instance,
                what="kv",
                startup_timeout=5,
                backoff=POLICY,
                task_status=task_status,
            )
        )
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    back = [r.getMessage() for r in caplog.records if "serving again" in r.getMessage()]
    assert back == [
        "namespace 'kv' is serving again after 0.100 s down (attempt 1 crashed; instance 1)"
    ]
