"""The one restart loop: keep a plugin instance serving, whatever its deployment model.

A deployment model (:mod:`prism.hosting.in_process`, :mod:`~prism.hosting.sidecar`,
:mod:`~prism.hosting.remote`) knows how to run its plugin *once*: start it, Initialize it,
report started once it serves, then serve until it fails (it raises :class:`PluginFailed`, or
anything else) or is cancelled. :func:`supervise` runs that again and again::

    attempt 1: start ── serving ── fails ─┐
                                          ├─ down at once (UNAVAILABLE with the reason)
                                          ├─ wait: backoff (doubling, reset after a stable run)
    attempt 2: start ── serving ── ...  ◀─┘

Every change reaches the instance (:meth:`Instance.up` / :meth:`Instance.down`) synchronously:
there is no queue between the loop and the host, so nothing the host needs can be dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from prism.hosting.instance import Instance

log = logging.getLogger("prism.hosting")

Attempt = Callable[..., Awaitable[None]]
"""``async def attempt(number, *, task_status)``: run the plugin once (module docstring)."""


@dataclass(frozen=True)
class BackoffPolicy:
    """Restart delays: ``initial`` doubling up to ``maximum``, reset after a stable run.

    ``first_at_once``: the first restart (ever, or after a stable run) does not wait; the
    next ones wait ``initial``, doubling. For a restart that costs nothing to begin, a sidecar's
    from its standby, already launched: a crash loop still backs off from its second crash."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    reset_after: float = 10.0
    first_at_once: bool = False


#: After a crash or an UNHEALTHY answer (a plugin in a crash loop must not spin).
RESTART_BACKOFF = BackoffPolicy()
#: A sidecar's restart: on its warm standby, which is launched and waiting, so the first one
#: is at once (the 0.1 s it used to wait was a third of the recovery target, issue 8). Launches
#: of the standbys themselves back off on RESTART_BACKOFF (prism/hosting/sidecar.py).
SIDECAR_RESTART_BACKOFF = BackoffPolicy(first_at_once=True)
#: Reconnecting to a remote plugin service: capped low, so that once the service is back the
#: namespace serves again within about half a second (a refused connection costs nothing).
RECONNECT_BACKOFF = BackoffPolicy(initial=0.05, maximum=0.5)


class Backoff:
    """Exponential restart delays that start over once the plugin has run stably."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._next = policy.initial
        self._at_once = policy.first_at_once

    def next_delay(self, ran_for: float) -> float:
        """The delay before the next attempt, given how long the last one served."""
        if ran_for >= self.policy.reset_after:
            self._next = self.policy.initial
            self._at_once = self.policy.first_at_once
        if self._at_once:
            self._at_once = False
            return 0.0
        delay = self._next
        self._next = min(delay * self.policy.multiplier, self.policy.maximum)
        return delay


class PluginFailed(Exception):
    """A running plugin stopped serving (crashed, UNHEALTHY, unreachable); the message says
    why, and is what callers read in their UNAVAILABLE."""


class PluginUnreachable(PluginFailed):
    """A remote plugin service cannot be reached (refused, TLS, no answer). Not a reason to
    fail a proxy's start: the namespace starts NOT_SERVING and the host keeps trying."""


def describe(exc: BaseException) -> str:
    """One line for an attempt's failure: the messages of every exception in it."""
    leaves = _leaves(exc)
    return "; ".join(str(leaf) or type(leaf).__name__ for leaf in leaves)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def only_unreachable(exc: BaseException) -> bool:
    return all(isinstance(leaf, PluginUnreachable) for leaf in _leaves(exc))


async def supervise(
    attempt: Attempt,
    instance: Instance,
    *,
    what: str,
    startup_timeout: float,
    backoff: BackoffPolicy = RESTART_BACKOFF,
    start_unreachable: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``attempt`` until cancelled, again after every failure (module docstring).

    Reports started once the first attempt serves. Its failure is raised instead (a
    TooSlowError when it does not serve within ``startup_timeout``) — except, with
    ``start_unreachable``, a :class:`PluginUnreachable`: then it reports started with the
    instance down and keeps trying. Each later attempt gets ``startup_timeout`` too: a plugin
    that hangs while starting is stopped and tried again. After ``instance.retiring`` is set
    (it was sent Shutdown), an attempt's end is expected: the loop returns.

    Cancellation: cancels the running attempt (which stops its plugin) and re-raises.
    """
    delays = Backoff(backoff)
    started = False
    number = 0
    while True:
        number += 1
        ready_at: float | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(startup_timeout):
                    await nursery.start(attempt, number)
                ready_at = trio.current_time()
                if not started:
                    started = True
                    task_status.started()
            reason = "the plugin instance ended"
        except Exception as exc:
            if not started and not (start_unreachable and only_unreachable(exc)):
                raise
            reason = (
                f"not serving within {startup_timeout:g} s"
                if any(isinstance(leaf, trio.TooSlowError) for leaf in _leaves(exc))
                else describe(exc)
            )
        except BaseExceptionGroup as group:
            # Being stopped while the plugin also failed (a remote's connection lost as the
            # proxy shuts down): the cancellation wins. Re-raising the failure with it would
            # leave the failure standing once the stopping scope absorbs the Cancelled, and
            # end the host.
            cancelled, failures = group.split(trio.Cancelled)
            if cancelled is None or failures is None:
                raise
            log.info("%s failed while being stopped: %s", what, describe(failures))
            raise cancelled from None
        instance.down(reason)
        if instance.retiring:
            return
        if not started:
            started = True
            task_status.started()  # start_unreachable: NOT_SERVING, and keep trying
        delay = delays.next_delay(0.0 if ready_at is None else trio.current_time() - ready_at)
        if ready_at is not None or number == 1:
            log.error("%s failed: %s; restarting in %.2f s", what, reason, delay)
        else:
            log.warning("%s: attempt %d failed: %s; next in %.2f s", what, number, reason, delay)
        await trio.sleep(delay)
        instance.restarted()
