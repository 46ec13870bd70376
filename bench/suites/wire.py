"""`wire` suite: what prism.grpc's sans-IO layer costs per unary call, phase by phase.

A `ClientConnection` and a `ServerConnection` are wired to each other in memory (no sockets, no
Trio) and make one unary call after another: the client opens a stream and sends the request
(HEADERS + DATA with END_STREAM), the server takes it in and answers (HEADERS, DATA, trailers),
the client takes the answer in. Each of the four phases is timed with `perf_counter_ns` around
the sans-IO calls only, and the report gives microseconds per call, median over rounds.

This is the HTTP/2 + gRPC framing work a plugin call adds twice over on its way through a
sidecar or remote plugin (the proxy's client side, the plugin's server side), measured warm: a
process woken once per call pays roughly twice as much (docs/benchmarks.md). It runs in-process
and needs nothing but the project.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench import report
from bench.suites import register
from prism.grpc.wire.client_conn import ClientConnection
from prism.grpc.wire.events import MessageReceived, MessagesReceived
from prism.grpc.wire.server_conn import ServerConnection
from prism.grpc.wire.status import Status

PACKAGES = ("trio", "h2", "hpack", "hyperframe")
PHASES = ("client send", "server receive", "server send", "client receive")
METHOD = "/prism.plugin.v1.BackendPlugin/Execute"
LIMIT = 4 << 20


class _Pair:
    def __init__(self) -> None:
        self.client = ClientConnection(authority="localhost", max_receive_message_size=LIMIT)
        self.server = ServerConnection(max_receive_message_size=LIMIT)
        self.client.initiate_connection()
        self.server.initiate_connection()
        for _ in range(2):  # prefaces, SETTINGS and their ACKs
            self.server.receive_data(self.client.data_to_send())
            self.client.receive_data(self.server.data_to_send())

    def call(self, request: bytes, response: bytes, times: list[int]) -> None:
        client, server = self.client, self.server
        t0 = time.perf_counter_ns()
        sid = client.start_request(METHOD)
        client.send_message(sid, request, end=True)
        sent = b"".join(client.output())
        t1 = time.perf_counter_ns()
        for event in server.receive_data(sent):
            if type(event) is MessagesReceived:
                for message in event.messages:
                    server.consumed(event.stream_id, len(message) + 5)
        t2 = time.perf_counter_ns()
        server.send_message(sid, response)
        server.send_trailers(sid, Status.OK)
        server.finish(sid)
        answer = b"".join(server.output())
        t3 = time.perf_counter_ns()
        for event in client.receive_data(answer):
            if type(event) is MessageReceived:
                client.consumed(event.stream_id, len(event.message) + 5)
        client.finish(sid)
        rest = client.output()
        if rest:
            server.receive_data(b"".join(rest))
        t4 = time.perf_counter_ns()
        for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            times[i] += b - a


class WireSuite:
    name = "wire"
    summary = "sans-IO cost of one unary call per phase (client/server, send/receive), warm"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--calls", type=int, help="calls per round (default 20000, --quick 2000)"
        )
        parser.add_argument("--request-size", type=int, default=64, help="bytes (default 64)")
        parser.add_argument("--response-size", type=int, default=158, help="bytes (default 158)")

    def run(self, args: argparse.Namespace) -> int:
        calls: int = args.calls or (2000 if args.quick else 20000)
        repeat: int = args.repeat or (1 if args.quick else 5)
        request, response = b"q" * args.request_size, b"r" * args.response_size
        pair = _Pair()
        for _ in range(calls // 10):  # warm-up, and the HPACK tables fill
            pair.call(request, response, [0, 0, 0, 0])
        rounds: list[list[float]] = []
        for _ in range(repeat):
            times = [0, 0, 0, 0]
            for _ in range(calls):
                pair.call(request, response, times)
            rounds.append([t / calls / 1000 for t in times])
        medians = [statistics.median(r[i] for r in rounds) for i in range(len(PHASES))]
        total = statistics.median(sum(r) for r in rounds)
        rows = []
        for i, (phase, value) in enumerate(zip(PHASES, medians, strict=True)):
            spread = f"{min(r[i] for r in rounds):.1f}..{max(r[i] for r in rounds):.1f}"
            rows.append([phase, f"{value:.1f}", spread])
        rows.append(["**one call, both sides**", f"**{total:.1f}**", ""])
        title = (
            f"### wire: sans-IO unary call, {args.request_size}-byte request, "
            f"{args.response_size}-byte response, {calls} calls per round, median of {repeat}"
        )
        markdown = "\n\n".join(
            [title, report.markdown_table(["phase", "µs per call", "min..max"], rows)]
        )
        print(markdown)
        data: dict[str, Any] = {
            "suite": self.name,
            "environment": report.environment(PACKAGES, {"calls": calls, "repeat": repeat}),
            "phases": dict(zip(PHASES, medians, strict=True)),
            "total_us": total,
            "rounds": rounds,
        }
        report.write_results(args.results_dir, f"wire-{report.timestamp()}", data, markdown)
        return 0


register(WireSuite())
