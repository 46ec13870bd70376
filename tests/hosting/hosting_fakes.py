"""Fake sidecar plugins (real child processes, standard library only, steered by flags) and
process helpers for the hosting tests."""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

FAKE_PLUGIN = r"""
import argparse, ctypes, os, resource, signal, socket, subprocess, sys, time

p = argparse.ArgumentParser()
p.add_argument("--core", default="1")
p.add_argument("--version")
p.add_argument("--mode", default="600")
p.add_argument("--socket")
p.add_argument("--no-bind", action="store_true")
p.add_argument("--no-handshake", action="store_true")
p.add_argument("--exit-before-handshake", type=int)
p.add_argument("--crash-after", type=float)
p.add_argument("--exit-code", type=int, default=3)
p.add_argument("--ignore-sigterm", action="store_true")
p.add_argument("--report", action="store_true")
p.add_argument("--alloc", type=int)
p.add_argument("--spawn-child", action="store_true")
p.add_argument("--counter")
p.add_argument("--json-lines", action="store_true")  # log as the SDK's sidecars do
p.add_argument("--fail-launches", default="")  # e.g. "2,3": these launches die at startup
args = p.parse_args()

if "PRISM_PLUGIN_MAGIC_COOKIE" not in os.environ:
    sys.exit("not launched by the proxy")
if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("booting", flush=True)
print("stderr: booting", file=sys.stderr, flush=True)
if args.counter:
    n = int(open(args.counter).read() or 0) + 1 if os.path.exists(args.counter) else 1
    open(args.counter, "w").write(str(n))
    if str(n) in args.fail_launches.split(","):
        print(f"launch {n} fails", file=sys.stderr, flush=True)
        sys.exit(4)
if args.exit_before_handshake is not None:
    print("fatal: cannot connect to backend", file=sys.stderr, flush=True)
    sys.exit(args.exit_before_handshake)
if args.no_handshake:
    time.sleep(3600)
path = os.environ["PRISM_PLUGIN_SOCKET"]
if not args.no_bind:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    os.chmod(path, int(args.mode, 8))
    sock.listen()
version = args.version or os.environ["PRISM_PLUGIN_PROTOCOL_VERSIONS"].split(",")[0]
print(f"PRISM|{args.core}|{version}|unix|{args.socket or path}|grpc", flush=True)
print("serving", flush=True)
print("a warning", file=sys.stderr, flush=True)
print("ERROR kv.backend: connection refused", file=sys.stderr, flush=True)
print("INFO kv.backend: connected", file=sys.stderr, flush=True)
if args.json_lines:
    import json
    record = {"level": "ERROR", "logger": "kv.backend", "message": "lost the backend",
              "trace_id": "ab" * 16, "namespace": "forged", "plugin": "forged"}
    print(json.dumps(record), file=sys.stderr, flush=True)
    huge = {"level": "INFO", "logger": "kv.backend", "message": "x" * 70000}
    print(json.dumps(huge), file=sys.stderr, flush=True)
    print("json done", file=sys.stderr, flush=True)
if args.report:
    value = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    print(f"pdeathsig={value.value}", flush=True)
    for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE"):
        print(f"{name}={resource.getrlimit(getattr(resource, name))}", flush=True)
if args.alloc:
    try:
        block = bytearray(args.alloc)
        print("alloc ok", flush=True)
    except MemoryError:
        print("alloc failed: MemoryError", flush=True)
if args.spawn_child:
    child = subprocess.Popen(["sleep", "60"])
    print(f"child={child.pid}", flush=True)
if args.crash_after is not None:
    time.sleep(args.crash_after)
    print("crashing", file=sys.stderr, flush=True)
    os._exit(args.exit_code)
if args.ignore_sigterm:
    while True:
        time.sleep(3600)
sys.stdin.buffer.read()
print("stdin closed; exiting", flush=True)
"""


def is_dead(pid: int) -> bool:
    """Gone or a zombie (an orphan's zombie may wait for a PID 1 that never reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def is_reaped(pid: int) -> bool:
    """Our child ``pid`` is no longer waitable: no zombie left behind."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()``; the caller's cancel scope is the deadline."""
    # Polling on purpose: the predicates watch other processes, which cannot set a trio.Event.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)
