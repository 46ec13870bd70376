"""Keeping a sidecar plugin running: restart on crash with backoff, and report every change.

The hosting layer runs one :class:`PluginSupervisor` per sidecar plugin instance inside that
instance's nursery and listens to its events: on :class:`Crashed` it marks the plugin
UNAVAILABLE at once (callers fail fast instead of waiting for a restart), on :class:`Ready` it
connects to the new socket (every launch gets a fresh one) and routes to it again.

Events, in order, for one supervisor::

    Starting -> Ready -> Crashed -> Restarting -> Starting -> Ready -> ... -> Stopped
    Starting -> Failed -> Stopped             (the first launch failed: run() raises)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.hosting.process import (
    BackoffPolicy,
    ExitStatus,
    PluginProcess,
    PluginSpec,
    create_runtime_dir,
)
from prism.plugin_protocol.handshake import Handshake, PluginStartError

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Starting:
    plugin: str
    attempt: int  # 1 for the first launch
    socket_path: Path


@dataclass(frozen=True)
class Ready:
    plugin: str
    attempt: int
    handshake: Handshake
    pid: int


@dataclass(frozen=True)
class Crashed:
    plugin: str
    attempt: int
    exit_status: ExitStatus | None  # None if it never started (e.g. the executable vanished)
    reason: str


@dataclass(frozen=True)
class Restarting:
    plugin: str
    delay: float  # seconds until the next Starting


@dataclass(frozen=True)
class Failed:
    plugin: str
    error: PluginStartError


@dataclass(frozen=True)
class Stopped:
    plugin: str
    exit_status: ExitStatus | None  # of the last launch


PluginEvent = Starting | Ready | Crashed | Restarting | Failed | Stopped


class Backoff:
    """Exponential restart delays that start over once the plugin has run stably."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._next = policy.initial

    def next_delay(self, ran_for: float) -> float:
        """The delay before the next launch, given how long the last one ran after Ready."""
        if ran_for >= self.policy.reset_after:
            self._next = self.policy.initial
        delay = self._next
        self._next = min(delay * self.policy.multiplier, self.policy.maximum)
        return delay


class PluginSupervisor:
    """Runs one sidecar plugin and restarts it when it exits; see the module docstring.

    ``on_event`` is called synchronously for each event from the supervisor's task; it must not
    block or raise (to hand events to another task, pass a memory channel's ``send_nowait``).
    """

    def __init__(
        self, spec: PluginSpec, *, on_event: Callable[[PluginEvent], None] | None = None
    ) -> None:
        self.spec = spec
        self._on_event = on_event
        self._current: PluginProcess | None = None

    @property
    def handshake(self) -> Handshake | None:
        """The running plugin's handshake, None while it is down or starting."""
        current = self._current
        return None if current is None else current.handshake

    @property
    def pid(self) -> int | None:
        current = self._current
        return None if current is None else current.pid

    async def run(
        self, *, task_status: trio.TaskStatus[Handshake] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Launch the plugin, report its first handshake, and keep it running until cancelled.

        The first launch must succeed: if it does not, :class:`Failed` is reported and its
        :class:`PluginStartError` raised (so ``await nursery.start(supervisor.run)`` fails with
        the reason). After that, crashes and failed restarts are retried with backoff forever.

        Cancellation: terminates the current plugin process (stdin closed, SIGTERM,
        ``spec.stop_grace``, SIGKILL), reaps it, removes the runtime directory, reports
        :class:`Stopped` and re-raises.
        """
        name = self.spec.name
        runtime_dir = create_runtime_dir(name, self.spec.runtime_parent)
        backoff = Backoff(self.spec.backoff)
        last_exit: ExitStatus | None = None
        ready_once = False
        attempt = 0
        try:
            while True:
                attempt += 1
                socket_path = runtime_dir / f"plugin-{attempt}.sock"
                self._emit(Starting(name, attempt, socket_path))
                process = PluginProcess(self.spec, socket_path=socket_path, runtime_dir=runtime_dir)
                ready_at: float | None = None
                failure: PluginStartError | None = None
                try:
                    async with trio.open_nursery() as nursery:
                        # Caught here: out of the nursery it would arrive in an ExceptionGroup.
                        try:
                            handshake = await nursery.start(process.run)
                        except PluginStartError as exc:
                            failure = exc
                        else:
                            ready_at = trio.current_time()
                            self._current = process
                            assert process.pid is not None
                            self._emit(Ready(name, attempt, handshake, process.pid))
                            if not ready_once:
                                ready_once = True
                                task_status.started(handshake)
                finally:
                    self._current = None
                    last_exit = process.exit_status
                    _remove_stale_socket(socket_path)
                if failure is not None and not ready_once:
                    self._emit(Failed(name, failure))
                    raise failure
                reason = (
                    str(failure)
                    if failure is not None
                    else f"plugin {name!r} exited unexpectedly ({process.exit_status})"
                )
                _log.warning("%s", reason)
                self._emit(Crashed(name, attempt, process.exit_status, reason))
                ran_for = 0.0 if ready_at is None else trio.current_time() - ready_at
                delay = backoff.next_delay(ran_for)
                self._emit(Restarting(name, delay))
                await trio.sleep(delay)
        finally:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            self._emit(Stopped(name, last_exit))

    def _emit(self, event: PluginEvent) -> None:
        _log.debug("plugin event: %s", event)
        if self._on_event is not None:
            self._on_event(event)


def _remove_stale_socket(path: Path) -> None:
    # The plugin cannot unlink its socket when it is SIGKILLed; the next launch uses a new path,
    # so this only keeps the runtime directory tidy during a long crash loop.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
