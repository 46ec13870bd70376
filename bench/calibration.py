"""A same-run machine calibration: what this machine, in its current state, charges for the
ingredients of a plugin hop, measured with fixed code that does not change with prism.

Run as `python -m bench.calibration [--quick] [--wire]` (one JSON document on stdout). The
figures (docs/benchmarks.md says how to read them):

- ``python_us``: a fixed pure-Python workload (:func:`work`: the stdlib's pure-Python header
  parser, URL and query parsing, ``ipaddress``, ``fractions``, a dataclass, ``heapq``: many
  small functions and objects, as in an HTTP/2 + gRPC stack), warm in a loop. Median, µs.
- ``echo_us``: a round trip of 100 bytes between two processes over a Unix socket, the echo
  process blocked in ``recv`` between messages, p50 µs: a wakeup without work.
- ``hop_us``: a **synthetic sidecar hop**, the same shape as the plugins suite's added latency,
  with fixed code. Three processes: this one (the client), A (the proxy) and B (the plugin),
  on Unix sockets. *Direct*: A runs :func:`work` twice (the plugin's work, in-process) and
  answers. *Hop*: A runs it once (its client side of the hop), sends to B, which runs it twice
  (the plugin's work and its server side), A once more, and answers. ``hop_us`` = p50(hop) -
  p50(direct), the client pausing ``GAP_S`` between calls as the plugins suite's client
  effectively does (its calls take ~1 ms end to end): on a busy machine a process that slept
  that long wakes with its caches taken by others, and that is most of what grows.
- ``hop_warm_us``: the same without the pause; ``cold_factor`` = ``hop_us`` / ``hop_warm_us``.
- ``wire_us`` (``--wire``): prism's own sans-IO cost of one unary call, both sides, warm (the
  `wire` suite's loop), the median per call. Not fixed code: it imports whichever ``prism`` is
  first on the path (``PYTHONPATH`` picks a baseline tree's).

Run it in a process of its own (the plugins suite does): it forks, and its children must not
inherit threads (grpcio's).
"""

from __future__ import annotations

import argparse
import dataclasses
import email.parser
import email.policy
import fractions
import heapq
import ipaddress
import json
import os
import socket
import statistics
import string
import sys
import time
import urllib.parse
from typing import Any

_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_HEADERS = (
    b"Host: example.com\r\nUser-Agent: x/1.0\r\nAccept: */*\r\nX-Trace: abc123\r\n"
    b"Content-Type: application/grpc\r\nTE: trailers\r\n\r\n"
)
_URL = "https://user@example.com:8443/a/b;p?q=1&r=2&s=three#frag"
_NETWORK = ipaddress.ip_network("10.0.0.0/8")
_TEMPLATE = string.Template("$a-$b/$c")


@dataclasses.dataclass
class _Item:
    name: str
    value: int


def _one() -> int:
    message = _PARSER.parsebytes(_HEADERS)
    parts = urllib.parse.urlsplit(_URL)
    query = urllib.parse.parse_qsl(parts.query)
    inside = ipaddress.ip_address("10.1.2.3") in _NETWORK
    total = sum(fractions.Fraction(1, k) for k in range(1, 5))
    text = _TEMPLATE.substitute(a=1, b=parts.port, c=len(query))
    items = [_Item(str(i), i * 3 % 7) for i in range(8)]
    least = heapq.nsmallest(3, items, key=lambda item: item.value)
    return (
        len(message["X-Trace"] or "")
        + len(query)
        + inside
        + total.numerator
        + len(text)
        + len(least)
    )


def work(times: int = 2) -> int:
    """The fixed workload: `times` x ~37 µs on the 2-vCPU VM of docs/benchmarks.md."""
    return sum(_one() for _ in range(times))


def warm_python_us(iterations: int) -> float:
    for _ in range(20):
        work()
    times = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        work()
        times.append(clock() - start)
    return statistics.median(times) / 1e3


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(4096):
        sock.sendall(data)


def _proxy(client: socket.socket, plugin: socket.socket) -> None:
    """Process A: b"d..." = answer after the plugin's work; else a hop through B."""
    while data := client.recv(4096):
        if data[:1] == b"d":
            work(2)
        else:
            work(1)
            plugin.sendall(data)
            plugin.recv(4096)
            work(1)
        client.sendall(data)


def _plugin(sock: socket.socket) -> None:
    while data := sock.recv(4096):
        work(2)
        sock.sendall(data)


def _fork(body: Any, *keep: socket.socket, close: tuple[socket.socket, ...] = ()) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            for sock in close:
                sock.close()
            body(*keep)
        finally:
            os._exit(0)
    return pid


def _p50_round_trip(sock: socket.socket, message: bytes, calls: int, gap_s: float) -> float:
    clock = time.perf_counter_ns
    times = []
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)
        start = clock()
        sock.sendall(message)
        sock.recv(4096)
        times.append(clock() - start)
    return statistics.median(times) / 1e3


def echo_round_trip_us(calls: int) -> float:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = _fork(_echo, theirs, close=(ours,))
    theirs.close()
    try:
        _p50_round_trip(ours, b"x" * 100, 50, 0.0)
        return _p50_round_trip(ours, b"x" * 100, calls, 0.0)
    finally:
        ours.close()
        os.waitpid(pid, 0)


#: The client's pause between calls in ``hop_us`` (see the module docstring).
GAP_S = 0.001


def synthetic_hop_us(calls: int, rounds: int) -> tuple[float, float]:
    """(hop_us, hop_warm_us): the synthetic hop's added p50 with and without the pause, each
    the median of `rounds` alternations of `calls` direct and `calls` hop round trips."""
    client, a_client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a_plugin, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    plugin = _fork(_plugin, b, close=(client, a_client, a_plugin))
    proxy = _fork(_proxy, a_client, a_plugin, close=(client, b))
    for sock in (a_client, a_plugin, b):
        sock.close()
    direct, hop = b"d" * 100, b"h" * 100
    try:
        _p50_round_trip(client, hop, 50, 0.0)
        out = []
        for gap in (GAP_S, 0.0):
            added = []
            for _ in range(rounds):
                base = _p50_round_trip(client, direct, calls, gap)
                added.append(_p50_round_trip(client, hop, calls, gap) - base)
            out.append(statistics.median(added))
        return out[0], out[1]
    finally:
        client.close()
        os.waitpid(proxy, 0)
        os.waitpid(plugin, 0)


def wire_us(calls: int) -> float:
    """prism's sans-IO unary call, both sides: the median over `calls` calls, in µs (a mean, as
    the `wire` suite reports, also counts the time the process was preempted)."""
    from bench.suites.wire import _Pair  # imports prism

    pair = _Pair()
    request, response = b"q" * 64, b"r" * 158
    phases = [0, 0, 0, 0]
    for _ in range(calls // 5):
        pair.call(request, response, phases)
    times = []
    for _ in range(calls):
        phases = [0, 0, 0, 0]
        pair.call(request, response, phases)
        times.append(sum(phases))
    return statistics.median(times) / 1e3


def measure(quick: bool = False, wire: bool = False) -> dict[str, Any]:
    """One calibration: ~0.5 s (quick) or ~2 s, plus ~0.5 s with ``wire``."""
    iterations, calls, rounds = (300, 60, 3) if quick else (2000, 100, 5)
    hop_us, hop_warm_us = synthetic_hop_us(calls, rounds)
    result: dict[str, Any] = {
        "python_us": warm_python_us(iterations),
        "echo_us": echo_round_trip_us(iterations),
        "hop_us": hop_us,
        "hop_warm_us": hop_warm_us,
        "cold_factor": hop_us / hop_warm_us if hop_warm_us > 0 else None,
        "loadavg": os.getloadavg()[0],
    }
    if wire:
        result["wire_us"] = wire_us(1000 if quick else 3000)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibration")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (~0.3 s)")
    parser.add_argument("--wire", action="store_true", help="also prism's sans-IO call cost")
    args = parser.parse_args()
    json.dump(measure(args.quick, args.wire), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
