"""What confines a sidecar plugin process: death with the proxy, and resource limits.

Both are applied in the child between fork and exec (``preexec_fn``), so the plugin is never
observable without them. Everything the child needs is computed in the parent first: after a
fork from a threaded process the child should only make system calls, not load libraries.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ResourceLimits:
    """Per-plugin rlimits, applied in the child before exec. ``None`` leaves a limit alone.

    ``cpu_seconds`` is total CPU time over the process's life (RLIMIT_CPU), a guard against a
    runaway plugin (it gets SIGXCPU, then SIGKILL a second later, and is restarted), not a rate.
    """

    memory_bytes: int | None = None  # RLIMIT_AS: address space, so leave room for mappings
    cpu_seconds: int | None = None
    open_files: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpu_seconds", "open_files"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"ResourceLimits.{name} must be positive, got {value}")


def _rlimits(limits: ResourceLimits) -> list[tuple[int, tuple[int, int]]]:
    """(resource, (soft, hard)) pairs, computed in the parent so the child only applies them."""
    wanted = [
        (resource.RLIMIT_AS, limits.memory_bytes, 0),
        # The hard limit one second later: the plugin gets SIGXCPU first, a chance to log why.
        (resource.RLIMIT_CPU, limits.cpu_seconds, 1),
        (resource.RLIMIT_NOFILE, limits.open_files, 0),
    ]
    pairs = []
    for res, value, slack in wanted:
        if value is None:
            continue
        _, hard = resource.getrlimit(res)
        new_hard = value + slack
        if hard != resource.RLIM_INFINITY and os.geteuid() != 0:
            if value > hard:
                raise ValueError(f"resource limit {value} is above the proxy's hard limit {hard}")
            new_hard = min(new_hard, hard)  # only root may raise a hard limit
        pairs.append((res, (value, new_hard)))
    return pairs


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    # Looked up before fork: the child must not dlopen between fork and exec.
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def make_preexec(limits: ResourceLimits) -> Callable[[], None]:
    """The ``preexec_fn`` for a plugin: PDEATHSIG(SIGKILL) on Linux, then ``limits``.

    Raises ValueError (in the parent, before any fork) for a limit the proxy may not grant.
    """
    parent = os.getpid()
    prctl = _load_prctl()
    pairs = _rlimits(limits)

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        if prctl is not None:
            if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
            if os.getppid() != parent:  # the proxy died before the line above took effect
                os.kill(os.getpid(), signal.SIGKILL)
        for res, pair in pairs:
            resource.setrlimit(res, pair)

    return preexec
