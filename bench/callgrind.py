"""Instructions per streamed message (or unary call) in the prism echo server, by callgrind.

`python -m bench.callgrind [--tree DIR] [--server echo|route] [--client trickle|grpcio|unary]
[--per-read N] [--count N]` starts `bench/servers/prism_echo.py` (with `prism` from DIR,
default this tree) under `valgrind --tool=callgrind`, sends one warm-up client stream, zeroes
the counters, sends one measured client stream of COUNT 1 KiB messages, dumps the counters and
prints instructions per message. `--client trickle` (the default) is bench/trickle_client.py:
PER_READ messages per server read, the same under valgrind as at full speed; `grpcio` is
grpcio's client at whatever pace valgrind allows (many messages per read).

`--client unary` sends COUNT 100-byte unary echo calls with h2load instead, on one connection
with PER_READ calls in flight (1: sequential calls, the latency path; more: calls batched per
read as under load, though valgrind's slowness makes the batches larger than at full speed),
and prints instructions per call. `--server route` (with `--client unary`) runs the proxy
suite's route case instead of the echo (`bench.servers.prism_proxy --no-call-stages`: front
door, route, an in-process memstore namespace) and sends Execute calls (a `set` of one key as
the warm-up, then `get`s of it): its count over the echo's is issue 9's "plugin path within
1.5x of prism's bare echo", read without the machine's noise (user-space instructions only:
system calls and cache misses are not in it). `--server stages` runs the same proxy with every
stage on, as the proxy suite's `tracing` case configures it (bearer JWT, ES256, on every call;
authorization by one rule; both rate limits; the concurrency limit; metrics; audit to a file;
tracing): its count over route's is what the stages cost per call.

Callgrind counts are deterministic to a fraction of a percent, so before/after compares on a
noisy machine where timings don't. Needs valgrind (Debian's `valgrind`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(3000):  # 10 minutes: valgrind starts slowly on a busy machine
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start listening")


def _client(
    kind: str,
    port: int,
    count: int,
    per_read: int,
    server: str,
    warm_up: bool,
    headers: tuple[str, ...] = (),
) -> None:
    target = f"127.0.0.1:{port}"
    if kind == "unary":
        _unary(port, count, per_read, server, "set" if warm_up else "get", headers)
        return
    if kind == "trickle":
        cmd = ["-m", "bench.trickle_client", target, str(count), "1024", str(per_read)]
    else:
        cmd = ["-m", "bench.stream_client", target, "client", str(count), "1024"]
    subprocess.run([sys.executable, *cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def _execute(operation: str) -> bytes:
    """An Execute request for the route proxy's memstore namespace: a set of KEY (100 bytes)
    or a get of it."""
    from prism._proto.prism.data.v1 import GetRequest, SetRequest
    from prism._proto.prism.proxy.v1 import ExecuteRequest
    from prism.sdk.typed import pack

    request = ExecuteRequest(namespace=NAMESPACE, operation=operation)
    params = SetRequest(key=KEY, value=bytes(100)) if operation == "set" else GetRequest(key=KEY)
    request.typed_params = pack(params)
    return bytes(request)


def _unary(
    port: int, count: int, in_flight: int, server: str, operation: str, headers: tuple[str, ...]
) -> None:
    from bench import h2load

    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        if server != "echo":
            message = _execute(operation)
            url = f"http://127.0.0.1:{port}/prism.proxy.v1.DataProxy/Execute"
        else:
            message = b"\x0a\x62" + bytes(98)  # EchoMessage{payload: 98 bytes}: 100 bytes
            url = f"http://127.0.0.1:{port}/prism.bench.v1.Echo/Unary"
        body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
        load = h2load.Load(clients=1, streams=in_flight, requests=count)
        # Execute's responses are not echoes: check that each carried a message (a failed call
        # carries none), not its size.
        least = 16 if server != "echo" else None
        h2load.run(h2load.find_h2load(), url, body, load, headers=headers, min_response_bytes=least)


NAMESPACE = "memstore"
KEY = "callgrind-key"


def _server_argv(server: str, port: int, tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    """The server's command line, and the headers every request carries."""
    if server == "echo":
        return ["-m", "bench.servers.prism_echo", str(port), "--no-flood-limits"], ()
    headers: tuple[str, ...] = ()
    extra: list[str] = ["--no-call-stages"]
    if server == "route":
        config: dict[str, object] = {
            "listen": f"127.0.0.1:{port}",
            "runtime_dir": str(tmp / "run"),
            "admin": {"enabled": False},
            "namespaces": [
                {
                    "name": NAMESPACE,
                    "plugin": {"name": "memstore", "mode": "in_process"},
                    "access": {"anonymous": True},
                }
            ],
        }
    else:  # every stage: the proxy suite's last case, the one its verdict is read on
        from bench.suites import proxy as suite

        [case] = [c for c in suite.CASES.values() if c.all_stages]
        setup = case.setup(tmp)
        config = suite.proxy_config(port, setup, tmp / "run")
        headers, extra = setup.headers, []
    path = tmp / f"{server}.json"
    path.write_text(json.dumps(config))
    return ["-m", "bench.servers.prism_proxy", str(port), "--config", str(path), *extra], headers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(tree: Path, client: str, count: int, per_read: int, server: str = "echo") -> float:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
        server_argv, headers = _server_argv(server, port, Path(tmp))
        argv = [sys.executable, *server_argv]
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *argv],
            # Not ROOT: `python -m` puts its working directory first on sys.path, ahead of
            # PYTHONPATH, and `prism` would come from this tree whatever --tree says. (The
            # server's module, bench.servers.*, comes from DIR when it has one: an export.)
            cwd=tmp,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, proc)
            warm_up = max(count // 10, 500)
            _client(client, port, warm_up, per_read, server, True, headers)
            control = ["callgrind_control"]
            subprocess.run([*control, "-z", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
            _client(client, port, count, per_read, server, False, headers)
            subprocess.run([*control, "-d", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        dump = Path(f"{out}.{proc.pid}.1").read_text(errors="replace")
    match = re.search(r"^(?:summary|totals): (\d+)", dump, re.MULTILINE)
    if match is None:
        raise SystemExit("no totals in callgrind's dump")
    return int(match.group(1)) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="where `prism` is imported from")
    parser.add_argument("--client", choices=["trickle", "grpcio", "unary"], default="trickle")
    parser.add_argument(
        "--per-read",
        type=int,
        default=6,
        help="messages per read (trickle); calls in flight (unary)",
    )
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument(
        "--server",
        choices=["echo", "route", "stages"],
        default="echo",
        help="route: the proxy's route case (bench.servers.prism_proxy --no-call-stages, an "
        "in-process memstore namespace), Execute get calls; stages: the same proxy with every "
        "stage on (the proxy suite's tracing case); both need --client unary",
    )
    args = parser.parse_args()
    if args.server != "echo" and args.client != "unary":
        parser.error(f"--server {args.server} needs --client unary")
    per_message = measure(args.tree.resolve(), args.client, args.count, args.per_read, args.server)
    if args.client == "unary":
        what = f"{args.server} call (unary, {args.per_read} in flight)"
    else:
        what = f"message ({args.per_read} per read)" if args.client == "trickle" else "message"
    print(f"{args.tree}: {per_message / 1000:.1f}k instructions per {what}")


if __name__ == "__main__":
    main()
