"""Instructions per streamed message in the prism echo server, counted by callgrind.

`python -m bench.callgrind [--tree DIR] [--client trickle|grpcio] [--per-read N] [--count N]`
starts `bench/servers/prism_echo.py` (with `prism` from DIR, default this tree) under
`valgrind --tool=callgrind`, sends one warm-up client stream, zeroes the counters, sends one
measured client stream of COUNT 1 KiB messages, dumps the counters and prints instructions
per message. `--client trickle` (the default) is bench/trickle_client.py: PER_READ messages
per server read, the same under valgrind as at full speed; `grpcio` is grpcio's client at
whatever pace valgrind allows (many messages per read). Callgrind counts are deterministic
to a fraction of a percent, so before/after compares on a noisy machine where timings don't.
Needs valgrind (Debian's `valgrind`).
"""

from __future__ import annotations

import argparse
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
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start listening")


def _client(kind: str, port: int, count: int, per_read: int) -> None:
    target = f"127.0.0.1:{port}"
    if kind == "trickle":
        cmd = ["-m", "bench.trickle_client", target, str(count), "1024", str(per_read)]
    else:
        cmd = ["-m", "bench.stream_client", target, "client", str(count), "1024"]
    subprocess.run([sys.executable, *cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(tree: Path, client: str, count: int, per_read: int) -> float:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
        server = [sys.executable, "-m", "bench.servers.prism_echo", str(port), "--no-flood-limits"]
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *server],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, proc)
            _client(client, port, max(count // 10, 500), per_read)  # warm-up
            control = ["callgrind_control"]
            subprocess.run([*control, "-z", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
            _client(client, port, count, per_read)
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
    parser.add_argument("--client", choices=["trickle", "grpcio"], default="trickle")
    parser.add_argument("--per-read", type=int, default=6, help="messages per read (trickle)")
    parser.add_argument("--count", type=int, default=6000)
    args = parser.parse_args()
    per_message = measure(args.tree.resolve(), args.client, args.count, args.per_read)
    pace = f"{args.per_read} per read" if args.client == "trickle" else "grpcio's pace"
    print(f"{args.tree}: {per_message / 1000:.1f}k instructions per message ({pace})")


if __name__ == "__main__":
    main()
