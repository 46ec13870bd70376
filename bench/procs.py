"""Server processes: start, wait for the port, read their CPU time and memory, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import IO

from bench.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) from /proc/<pid>/stat, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError as exc:
        raise BenchError(f"process {pid} is gone") from exc
    # Fields after "pid (comm)"; comm may contain spaces and parentheses, hence rpartition.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


@dataclass(frozen=True)
class Sched:
    """What the scheduler did with a process (all its threads), from /proc/<pid>/task/*.

    ``cpu_ns``: time on a CPU; ``wait_ns``: time runnable but waiting for a CPU (the run
    queue); ``slices``: times it was put on a CPU (schedstat, ns precision, unlike the 10 ms
    ticks of /proc/<pid>/stat); ``voluntary``/``involuntary``: context switches because it
    blocked (a wait for I/O) or because it was preempted (status).
    """

    cpu_ns: int = 0
    wait_ns: int = 0
    slices: int = 0
    voluntary: int = 0
    involuntary: int = 0

    def __sub__(self, other: Sched) -> Sched:
        return Sched(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


def read_sched(pid: int) -> Sched:
    """:class:`Sched` totals of every thread of `pid` (threads that ended since are not
    counted: the processes measured here keep theirs)."""
    cpu = wait = slices = voluntary = involuntary = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError as exc:
        raise BenchError(f"process {pid} is gone") from exc
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/schedstat") as f:
                fields = f.read().split()
            with open(f"{base}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue  # a thread that just ended
        cpu, wait, slices = cpu + int(fields[0]), wait + int(fields[1]), slices + int(fields[2])
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return Sched(cpu, wait, slices, voluntary, involuntary)


def read_system_busy_seconds() -> float:
    """CPU time spent by the whole machine (all CPUs, not idle or iowait) since boot, in seconds.

    Its change over a run, minus the server's and h2load's CPU time, is what everything else on
    the machine used meanwhile: how noisy that run was.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def read_peak_rss_bytes(pid: int) -> int | None:
    """VmHWM (peak resident set) from /proc/<pid>/status."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def read_rss_bytes(pid: int) -> int | None:
    """VmRSS (resident set now) from /proc/<pid>/status."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


class ServerProcess:
    """`python -m <module> PORT <args>` run from the repository root, output to `log_path`."""

    def __init__(
        self, name: str, module: str, args: list[str], log_path: Path, root: Path | None = None
    ) -> None:
        self.name = name
        #: Imported first (before this tree): another checkout's `prism`, for before/after runs.
        self.root = root
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.argv = [sys.executable, "-m", module, str(self.port), *args]
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout_s: float = 30.0) -> None:
        env = dict(os.environ)
        # Another tree's plugins come with its `prism` (they import what that tree defines).
        first = (
            [str(self.root), *map(str, sorted(self.root.glob("plugins/*/src")))]
            if self.root is not None
            else []
        )
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [*first, str(ROOT), env.get("PYTHONPATH")])
        )
        env["PYTHONUNBUFFERED"] = "1"
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            # `python -m` puts the working directory first on sys.path: run from `root`.
            self.argv,
            cwd=self.root or ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(
                        f"{self.name} did not accept connections on {self.host}:{self.port} "
                        f"within {timeout_s:g}s; log: {self.log_path}\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def check_alive(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise BenchError(
                f"{self.name} exited with {code}: {' '.join(self.argv)}\n"
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.pid)

    def peak_rss_bytes(self) -> int | None:
        return read_peak_rss_bytes(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
