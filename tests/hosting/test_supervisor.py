from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from conftest import MakeSpec
from hosting_fakes import is_reaped, wait_until

from prism.hosting.process import BackoffPolicy, ExitStatus
from prism.hosting.supervisor import (
    Backoff,
    Crashed,
    Failed,
    PluginEvent,
    PluginSupervisor,
    Ready,
    Restarting,
    Starting,
    Stopped,
)
from prism.plugin_protocol.handshake import HandshakeError

FAST = BackoffPolicy(initial=0.05, maximum=0.2, reset_after=10.0)


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


def _of(events: list[PluginEvent], kind: type) -> list[PluginEvent]:
    return [e for e in events if isinstance(e, kind)]


async def test_plugin_supervisor_start_returns_first_handshake(make_spec: MakeSpec) -> None:
    events: list[PluginEvent] = []
    supervisor = PluginSupervisor(make_spec(name="kv"), on_event=events.append)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handshake = await nursery.start(supervisor.run)

            assert supervisor.handshake == handshake
            assert handshake.socket_path.is_socket()
            runtime_dir = handshake.socket_path.parent
            assert runtime_dir.stat().st_mode & 0o777 == 0o700
            pid = supervisor.pid
            assert pid is not None
            nursery.cancel_scope.cancel()

    assert [type(e) for e in events] == [Starting, Ready, Stopped]
    assert events[1] == Ready("kv", 1, handshake, pid)
    assert isinstance(events[2], Stopped)
    assert events[2].exit_status in (ExitStatus(0), ExitStatus(-signal.SIGTERM))
    assert is_reaped(pid)
    assert not runtime_dir.exists()
    assert supervisor.handshake is None


async def test_plugin_supervisor_restarts_crashed_plugin_with_backoff_and_fresh_socket(
    make_spec: MakeSpec,
) -> None:
    events: list[PluginEvent] = []
    spec = make_spec("--crash-after", "0.05", "--exit-code", "7", backoff=FAST)
    supervisor = PluginSupervisor(spec, on_event=events.append)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await wait_until(lambda: len(_of(events, Ready)) >= 4)
            nursery.cancel_scope.cancel()

    assert [type(e) for e in events[:7]] == [
        Starting, Ready, Crashed, Restarting, Starting, Ready, Crashed,
    ]  # fmt: skip
    crashed = _of(events, Crashed)
    assert all(isinstance(c, Crashed) and c.exit_status == ExitStatus(7) for c in crashed)
    assert "exited unexpectedly (exit status 7)" in crashed[0].reason  # type: ignore[union-attr]
    delays = [e.delay for e in events if isinstance(e, Restarting)][:3]
    assert delays == pytest.approx([0.05, 0.1, 0.2])
    sockets = [e.handshake.socket_path for e in events if isinstance(e, Ready)]
    assert len(set(sockets)) == len(sockets)
    pids = {e.pid for e in events if isinstance(e, Ready)}
    assert len(pids) == len(sockets)
    assert all(is_reaped(pid) for pid in pids)
    assert isinstance(events[-1], Stopped)


async def test_plugin_supervisor_resets_backoff_after_stable_run(make_spec: MakeSpec) -> None:
    events: list[PluginEvent] = []
    backoff = BackoffPolicy(initial=0.05, maximum=1.0, reset_after=0.2)
    spec = make_spec("--crash-after", "0.3", backoff=backoff)
    supervisor = PluginSupervisor(spec, on_event=events.append)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await wait_until(lambda: len(_of(events, Restarting)) >= 3)
            nursery.cancel_scope.cancel()

    delays = [e.delay for e in events if isinstance(e, Restarting)]
    assert delays[:3] == pytest.approx([0.05, 0.05, 0.05])


async def test_plugin_supervisor_retries_restart_that_fails_before_handshake(
    make_spec: MakeSpec, tmp_path: Path
) -> None:
    counter = tmp_path / "launches"
    events: list[PluginEvent] = []
    # Launch 1 works and crashes; launches 2 and 3 die before the handshake; launch 4 works.
    spec = make_spec(
        "--counter", str(counter), "--fail-launches", "2,3", "--crash-after", "0.05", backoff=FAST
    )
    supervisor = PluginSupervisor(spec, on_event=events.append)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await wait_until(lambda: len(_of(events, Ready)) >= 2)
            nursery.cancel_scope.cancel()

    crashed = _of(events, Crashed)
    assert "exited unexpectedly" in crashed[0].reason  # type: ignore[union-attr]
    assert "exited before its handshake (exit status 4)" in crashed[1].reason  # type: ignore[union-attr]
    assert "launch 2 fails" in crashed[1].reason  # type: ignore[union-attr]
    assert "launch 3 fails" in crashed[2].reason  # type: ignore[union-attr]
    assert [e.attempt for e in _of(events, Ready)][:2] == [1, 4]  # type: ignore[union-attr]


async def test_plugin_supervisor_first_start_failure_raises_from_start(
    make_spec: MakeSpec,
) -> None:
    events: list[PluginEvent] = []
    supervisor = PluginSupervisor(make_spec("--version", "9", name="old"), on_event=events.append)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(HandshakeError, match="plugin protocol version 9"):
                await nursery.start(supervisor.run)

    assert [type(e) for e in events] == [Starting, Failed, Stopped]


async def test_plugin_supervisor_cancel_sigkills_plugin_ignoring_sigterm(
    make_spec: MakeSpec,
) -> None:
    events: list[PluginEvent] = []
    spec = make_spec("--ignore-sigterm", stop_grace=0.3)
    supervisor = PluginSupervisor(spec, on_event=events.append)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            pid = supervisor.pid
            nursery.cancel_scope.cancel()

    assert events[-1] == Stopped("fake", ExitStatus(-signal.SIGKILL))
    assert pid is not None
    assert is_reaped(pid)


async def test_plugin_supervisor_cancel_during_backoff_stops_cleanly(make_spec: MakeSpec) -> None:
    events: list[PluginEvent] = []
    backoff = BackoffPolicy(initial=60.0, maximum=60.0)
    supervisor = PluginSupervisor(
        make_spec("--crash-after", "0.05", backoff=backoff), on_event=events.append
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await wait_until(lambda: bool(_of(events, Restarting)))
            nursery.cancel_scope.cancel()

    assert [type(e) for e in events] == [Starting, Ready, Crashed, Restarting, Stopped]
    assert events[-1] == Stopped("fake", ExitStatus(3))
