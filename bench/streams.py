"""The streaming scenarios' client: one grpcio stream per run, in its own process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass

from bench.errors import BenchError
from bench.procs import ROOT


@dataclass(frozen=True)
class StreamReport:
    messages: int
    payload_bytes: int
    elapsed_s: float
    #: CPU seconds the grpcio client process used (it shares the machine with the server).
    client_cpu_s: float


def run(host: str, port: int, mode: str, count: int, size: int) -> StreamReport:
    """One `python -m bench.stream_client` run: `mode` is "server" (the server streams) or
    "client" (the client does)."""
    command = [sys.executable, "-m", "bench.stream_client", f"{host}:{port}", mode]
    command += [str(count), str(size)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"stream client did not finish: {' '.join(command)}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(
            f"stream client failed ({proc.returncode}): {' '.join(command)}\n"
            f"{proc.stdout}{proc.stderr}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return StreamReport(
        messages=int(result["messages"]),
        payload_bytes=int(result["bytes"]),
        elapsed_s=float(result["elapsed_s"]),
        client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    )
