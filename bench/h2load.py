"""Running h2load (nghttp2's HTTP/2 load generator) and reading its report."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def find_h2load() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise BenchError(
            "h2load not found on PATH. It is Debian's `nghttp2-client` package: run "
            "`bash scripts/system-deps bench` (as root or with sudo), or use `nox -s bench`, "
            "which does that first."
        )
    return path


def h2load_version(h2load: str) -> str:
    out = subprocess.run([h2load, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()


@dataclass(frozen=True)
class Load:
    """One h2load invocation: `-c clients -m streams`, for `duration_s` or `requests`."""

    clients: int
    streams: int
    duration_s: float | None = None
    requests: int | None = None
    #: SETTINGS_MAX_FRAME_SIZE h2load advertises (the largest DATA frame a server may send it).
    max_frame_size: int | None = None
    #: h2load's receive windows, 2**bits - 1 (30 = 1 GiB, h2load's default): never the bottleneck.
    window_bits: int = 30
    connection_window_bits: int = 30

    def argv(self) -> list[str]:
        args = ["-c", str(self.clients), "-m", str(self.streams)]
        if self.duration_s is not None:
            args += ["-D", f"{self.duration_s:g}"]
        elif self.requests is not None:
            args += ["-n", str(self.requests)]
        else:
            raise ValueError("Load needs duration_s or requests")
        if self.max_frame_size is not None:
            args += ["-f", str(self.max_frame_size)]
        args += ["-w", str(self.window_bits), "-W", str(self.connection_window_bits)]
        return args

    def timeout_s(self) -> float:
        """How long h2load may take before it is killed (a hung server must not hang the run)."""
        return (self.duration_s or 0) + 300


@dataclass(frozen=True)
class H2loadReport:
    command: list[str]
    finished_s: float
    req_per_s: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int
    data_bytes: int
    #: CPU seconds h2load itself used (user + system): it shares the machine with the server.
    client_cpu_s: float


_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_FINISHED = re.compile(r"^finished in ([\d.]+)(ns|us|ms|s|m|h), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_DATA = re.compile(r"^traffic: .*?, [^,]*\((\d+)\) data\s*$", re.M)


def parse_report(output: str, command: list[str], client_cpu_s: float) -> H2loadReport:
    """The numbers in h2load's summary; BenchError when a line is missing."""

    def find(pattern: re.Pattern[str], what: str) -> re.Match[str]:
        match = pattern.search(output)
        if match is None:
            raise BenchError(f"h2load output has no {what!r} line:\n{output}")
        return match

    fin = find(_FINISHED, "finished in")
    total, started, done, succeeded, failed, errored, timeout = (
        int(g) for g in find(_REQUESTS, "requests:").groups()
    )
    s2, s3, s4, s5 = (int(g) for g in find(_STATUS, "status codes:").groups())
    return H2loadReport(
        command=command,
        finished_s=float(fin[1]) * _UNITS[fin[2]],
        req_per_s=float(fin[3]),
        total=total,
        started=started,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=s2,
        status_other=s3 + s4 + s5,
        data_bytes=int(find(_DATA, "traffic:")[1]),
        client_cpu_s=client_cpu_s,
    )


def run(
    h2load: str,
    url: str,
    body: Path,
    load: Load,
    *,
    headers: tuple[str, ...] = (),
    min_response_bytes: int | None = None,
) -> H2loadReport:
    """POST `body` (a gRPC-framed message) to `url` under `load`; raises BenchError on failure.

    h2load only sees HTTP: a gRPC error is still a 200 with `grpc-status` in the trailers. The
    echo makes that visible anyway: every OK response carries exactly the request body back,
    and an error response carries no DATA, so the received DATA bytes must be at least
    `succeeded * len(body)` (or `min_response_bytes` per response, for compressed responses
    whose length is not the request's).
    """
    command = [h2load, *load.argv(), "-d", str(body)]
    for header in (*GRPC_HEADERS, *headers):
        command += ["-H", header]
    command.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=load.timeout_s(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(
            f"h2load did not finish in {load.timeout_s():g}s: {' '.join(command)}"
        ) from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(
            f"h2load exited with {proc.returncode}: {' '.join(command)}\n{proc.stdout}{proc.stderr}"
        )
    client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = parse_report(proc.stdout, command, client_cpu_s)
    problems = []
    if report.succeeded == 0:
        problems.append("no request succeeded")
    if report.failed or report.errored or report.timeout:
        problems.append(
            f"{report.failed} failed, {report.errored} errored, {report.timeout} timed out"
        )
    # In a timed run (-D) responses still arriving when time is up can count in the status
    # codes without counting as done, so 2xx may exceed `succeeded` (by at most -c x -m).
    if report.status_other or report.status_2xx < report.succeeded:
        problems.append(
            f"HTTP status: {report.status_2xx} 2xx and {report.status_other} other "
            f"for {report.succeeded} succeeded"
        )
    body_len = min_response_bytes or body.stat().st_size
    if report.data_bytes < report.succeeded * body_len:
        missing = (report.succeeded * body_len - report.data_bytes) / body_len
        problems.append(
            f"received {report.data_bytes} DATA bytes for {report.succeeded} echoes of {body_len}: "
            f"~{missing:.0f} responses carried no message (a non-OK grpc-status?)"
        )
    if problems:
        raise BenchError(
            f"h2load run failed ({'; '.join(problems)}): {' '.join(command)}\n{proc.stdout}"
        )
    return report
