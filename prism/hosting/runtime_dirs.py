"""Sidecar runtime directories: one private (0700) directory per sidecar plugin instance, for
its sockets, and the clean-up of those a killed proxy left behind.

A proxy killed with SIGKILL cannot remove its directories. Each one therefore records its owner
in a file ``owner``: the proxy's pid and that process's start time (so a pid reused by another
process later does not pass for the owner). At start, :func:`remove_stale` removes the
directories of this kind whose owner is gone, and nothing else: not a directory without a
readable owner file, not one of another user, not one whose owner is alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("prism.hosting")

PREFIX = "prism-"
OWNER_FILE = "owner"
_OWNER_TAG = "prism-runtime-dir"


def process_start_time(pid: int) -> str | None:
    """``pid``'s start time in clock ticks after boot (``/proc/<pid>/stat`` field 22), None if
    there is no such process (or no /proc, where pids alone must do)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    return fields[19] if len(fields) > 19 else None


def _owner_line() -> str:
    pid = os.getpid()
    return f"{_OWNER_TAG} {pid} {process_start_time(pid) or '-'}\n"


def create(name: str, parent: Path | None = None) -> Path:
    """A fresh private (0700) directory for one sidecar's sockets, owned by this process; the
    caller removes it. A configured ``parent`` that does not exist yet is created (0700), as a
    service manager creates a runtime directory such as ``/run/prism``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:24]
    if parent is not None:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{safe}-", dir=parent))
    os.chmod(path, 0o700)  # mkdtemp already does; explicit because the checks rely on it
    fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_owner_line())
    return path


def _owner_alive(directory: Path) -> bool | None:
    """True/False for a directory of ours whose owner lives/died; None if it is not ours."""
    try:
        text = (directory / OWNER_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    parts = text.split()
    if len(parts) != 3 or parts[0] != _OWNER_TAG or not parts[1].isdigit():
        return None
    pid, started = int(parts[1]), parts[2]
    now = process_start_time(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return started == "-"  # no /proc: the pid exists; without a start time, trust it
    return now == started


def remove_stale(parent: Path | None = None) -> list[Path]:
    """Remove this kind's directories in ``parent`` (default: the temp directory) whose owner
    is gone; returns what was removed. Never raises: an unreadable entry is left alone."""
    root = Path(tempfile.gettempdir()) if parent is None else parent
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    uid = os.geteuid()
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        path = Path(entry.path)
        if _owner_alive(path) is False:
            with contextlib.suppress(OSError):
                shutil.rmtree(path)
                removed.append(path)
    if removed:
        log.info(
            "removed %d stale sidecar runtime director%s left by a proxy that is gone: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(str(p) for p in removed),
        )
    return removed
