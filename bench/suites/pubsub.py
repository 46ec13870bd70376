"""`pubsub` suite: one topic's fan-out through the proxy, memstore behind it.

One `prism serve` process serves a memstore namespace (in-process by default; `--modes
in_process,sidecar` adds a sidecar one). Per round and namespace:

- subscribers in a process of their own open `--subscribers` streams on one topic over
  `--channels` connections: `--client grpcio` (default; grpcio asyncio, a real gRPC client) or
  `--client h2load` (nghttp2's C load generator: next to no CPU per message, so the proxy gets
  the machine; see `bench.pubsub_load`);
- this process publishes (grpcio sync, one channel) `--rate` messages a second of
  `--payload-size` bytes for `--duration` seconds, on a fixed schedule (a publish that takes
  longer than the period delays the next ones, as a real publisher would be delayed), timing
  each;
- then it waits until every stream still open has received the last message.

Reported per namespace (medians over rounds): messages published per second, deliveries per
second (every stream's messages over the publishing time), the share of the expected deliveries
that arrived, the proxy's (and sidecar's) CPU time per delivery from the first publish until
the last delivery, publish latency p50/p99, delivery latency (publish to receipt, grpcio client)
p50/p99, the slowest whole second of deliveries, and the streams disconnected. Beside them: a
calibration (the `wire` suite's sans-IO unary call, in CPU time, measured here before the run)
and what the rest of the machine used meanwhile, because the machine is shared.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.errors import BenchError
from bench.procs import read_cpu_seconds, read_system_busy_seconds
from bench.pubsub_load import (
    TOPIC,
    Delivered,
    GrpcioSubscribers,
    H2loadSubscribers,
    Publisher,
)
from bench.suites import register
from bench.suites.plugins import PrismProcess, sidecar_pid

MODES = ("in_process", "sidecar")
CLIENTS = ("grpcio", "h2load")
PACKAGES = ("grpcio", "protobuf", "betterproto2", "h2", "trio", "prism-proxy")
#: The target of issue 8: 500 subscribers x 100 messages/s of 1 KiB for 30 s, none disconnected.
TARGET = {"subscribers": 500, "rate": 100.0, "payload_size": 1024, "duration": 30.0}


def log(message: str) -> None:
    print(f"[bench pubsub] {message}", file=sys.stderr, flush=True)


def namespace_of(mode: str) -> str:
    return {"in_process": "inproc", "sidecar": "sidecar"}[mode]


def proxy_config(port: int, modes: list[str], memstore: dict[str, int], runtime_dir: Path) -> str:
    """`memstore`: memstore's config fields to set (the rest keep memstore's defaults)."""
    namespaces = []
    for mode in modes:
        namespace: dict[str, Any] = {
            "name": namespace_of(mode),
            "plugin": {"name": "memstore", "mode": mode},
            "access": {"anonymous": True},  # the subscribers and publisher send no credentials
        }
        if config := dict(memstore):
            namespace["config"] = config
        namespaces.append(namespace)
    config = {
        "listen": f"127.0.0.1:{port}",
        "shutdown_grace": 2,
        "runtime_dir": str(runtime_dir),
        "admin": {"enabled": False},
        "namespaces": namespaces,
    }
    return json.dumps(config, indent=2) + "\n"


def _has_delivery_interval(tree: Path) -> bool:
    """Whether another tree's memstore knows `delivery_interval_ms` (a baseline from before it
    would refuse the field)."""
    proto = tree / "plugins/memstore/protos/prism/plugins/memstore/v1/config.proto"
    return proto.is_file() and "delivery_interval_ms" in proto.read_text()


def calibrate(calls: int = 3000, rounds: int = 5) -> float:
    """The `wire` suite's work, measured here in CPU time (the machine is shared: wall time
    would count the waits for a core too): µs of sans-IO work per unary call, median."""
    from bench.suites.wire import _Pair

    pair = _Pair()
    request, response = b"q" * 64, b"r" * 158
    for _ in range(calls // 5):
        pair.call(request, response, [0, 0, 0, 0])
    results = []
    for _ in range(rounds):
        times = [0, 0, 0, 0]
        start = time.thread_time_ns()
        for _ in range(calls):
            pair.call(request, response, times)
        results.append((time.thread_time_ns() - start) / calls / 1000)
    return statistics.median(results)


@dataclass
class Round:
    mode: str
    round: int
    subscribers: int
    channels: int
    published: int
    publish_s: float
    until_delivered_s: float
    deliveries: int
    expected: int
    proxy_cpu_s: float
    #: The proxy's CPU time while the publisher ran (its busy share is this / publish_s).
    proxy_cpu_publishing_s: float
    plugin_cpu_s: float | None
    client_cpu_s: float
    other_cpu_s: float
    publish_p50_ms: float
    publish_p99_ms: float
    delivery_p50_ms: float | None
    delivery_p99_ms: float | None
    slowest_second: int | None
    disconnected: int
    ended: dict[str, int] = field(default_factory=dict)

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.publish_s

    @property
    def cpu_us_per_delivery(self) -> float:
        return (self.proxy_cpu_s + (self.plugin_cpu_s or 0.0)) / max(1, self.deliveries) * 1e6


def _percentile_ms(values: list[int], q: float) -> float:
    from bench.pubsub_client import percentile

    return percentile(sorted(values), q) / 1e6


class PubsubSuite:
    name = "pubsub"
    summary = (
        "pub/sub fan-out: N subscribers on one memstore topic through the proxy, one paced "
        "publisher; deliveries/s, CPU per delivery, publish latency, disconnections"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--subscribers", type=int, default=500, help="streams (default 500)")
        parser.add_argument(
            "--channels",
            type=int,
            default=50,
            help="client connections the streams are spread over (default 50)",
        )
        parser.add_argument(
            "--rate", type=float, default=100.0, help="messages published per second (100)"
        )
        parser.add_argument(
            "--duration", type=float, help="seconds of publishing per round (default 30, --quick 3)"
        )
        parser.add_argument(
            "--payload-size", type=int, default=1024, help="bytes per message (default 1024)"
        )
        parser.add_argument(
            "--modes",
            default="in_process",
            help="plugin modes, comma-separated, from in_process,sidecar (default in_process)",
        )
        parser.add_argument(
            "--buffer", type=int, default=0, help="memstore subscriber_buffer (0: its default)"
        )
        parser.add_argument(
            "--delivery-interval-ms",
            type=int,
            default=None,
            help="memstore delivery_interval_ms (default: memstore's own, 20 ms adaptive; 0 = "
            "each message at once)",
        )
        parser.add_argument(
            "--client",
            choices=CLIENTS,
            default="grpcio",
            help="subscribers: grpcio asyncio (default) or h2load (C, HTTP/2 only: see "
            "bench/pubsub_load.py)",
        )
        parser.add_argument(
            "--baseline",
            type=Path,
            metavar="TREE",
            help="also run another source tree's proxy and memstore (e.g. `git archive main | "
            "tar -x -C TREE`), round for round beside this one: before/after in one run",
        )

    def run(self, args: argparse.Namespace) -> int:
        if importlib.util.find_spec("grpc") is None:
            raise BenchError("grpcio is not installed (use `nox -s bench`)")
        if not importlib.metadata.entry_points(group="prism.plugins", name="memstore"):
            raise BenchError(
                "the memstore plugin is not installed (pip install -e plugins/memstore)"
            )
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for mode in modes:
            if mode not in MODES:
                raise BenchError(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
        for option in ("subscribers", "channels", "rate", "payload_size"):
            if getattr(args, option) <= 0:
                raise BenchError(f"--{option.replace('_', '-')} must be positive")
        if args.client == "h2load":
            from bench import h2load

            h2load.find_h2load()  # fails early, saying how to get it
        repeat: int = args.repeat or (1 if args.quick else 3)
        duration: float = args.duration or (3.0 if args.quick else 30.0)
        channels = min(args.channels, args.subscribers)
        stamp = report.timestamp()
        logs = args.results_dir / "logs" / f"pubsub-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        log("calibrating (the wire suite's unary call, in this process)")
        calibration_us = calibrate()
        log(f"calibration: {calibration_us:.1f} µs per sans-IO unary call")
        env = report.environment(
            PACKAGES,
            {
                "repeat": repeat,
                "subscribers": args.subscribers,
                "channels": channels,
                "rate": args.rate,
                "duration_s": duration,
                "payload_size": args.payload_size,
                "subscriber_buffer": args.buffer or "default (1024)",
                "delivery_interval_ms": (
                    "default (20, adaptive)"
                    if args.delivery_interval_ms is None
                    else args.delivery_interval_ms
                ),
                "subscriber_client": (
                    H2loadSubscribers if args.client == "h2load" else GrpcioSubscribers
                ).name,
                "publisher": "grpcio sync, one channel, in the runner process",
                "calibration_wire_us_per_call": calibration_us,
            },
        )
        trees: list[tuple[str, Path | None]] = [("", None)]
        if args.baseline is not None:
            tree = args.baseline.resolve()
            if not (tree / "prism" / "cli" / "main.py").is_file():
                raise BenchError(f"--baseline {tree}: no prism/cli/main.py there")
            trees.append((" @baseline", tree))
            env["baseline_tree"] = str(tree)
        labels = [mode + suffix for mode in modes for suffix, _ in trees]
        rounds: list[Round] = []
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp_name:
            tmp = Path(tmp_name)
            proxies: list[tuple[str, PrismProcess, int | None]] = []
            try:
                for index, (suffix, root) in enumerate(trees):
                    runtime = tmp / f"run{index}"
                    runtime.mkdir(mode=0o700)
                    config_path = tmp / f"prism{index}.yaml"
                    proxy = PrismProcess(
                        "proxy" + suffix.replace(" @", "-"),
                        lambda port, path=config_path: ["serve", "--config", str(path)],
                        logs / f"proxy{suffix.replace(' @', '-')}.log",
                        root,
                    )
                    memstore = {"subscriber_buffer": args.buffer} if args.buffer else {}
                    if args.delivery_interval_ms is not None and (
                        root is None or _has_delivery_interval(root)
                    ):
                        memstore["delivery_interval_ms"] = args.delivery_interval_ms
                    config_path.write_text(proxy_config(proxy.port, modes, memstore, runtime))
                    shutil.copy(config_path, logs / config_path.name)
                    proxy.start(timeout_s=60)
                    plugin_pid = sidecar_pid(proxy.pid) if "sidecar" in modes else None
                    proxies.append((suffix, proxy, plugin_pid))
                    log(
                        f"proxy{suffix} pid {proxy.pid} on {proxy.host}:{proxy.port}"
                        + (f" (from {root})" if root else "")
                    )
                log(f"{repeat} round(s) of {duration:g} s")
                for round_no in range(repeat):
                    for mode in modes:
                        for suffix, proxy, plugin_pid in proxies:
                            pids = (proxy.pid, plugin_pid if mode == "sidecar" else None)
                            address = f"{proxy.host}:{proxy.port}"
                            result = self._round(
                                args,
                                (mode, mode + suffix),
                                round_no,
                                address,
                                pids,
                                duration,
                                channels,
                                logs,
                            )
                            rounds.append(result)
                            proxy.check_alive()
            finally:
                for _, proxy, _ in proxies:
                    proxy.stop()
        summary = summarize(rounds, labels)
        markdown = table(summary, args, duration, channels, calibration_us, env)
        data = {
            "suite": self.name,
            "environment": env,
            "medians": summary,
            "rounds": [asdict(r) for r in rounds],
        }
        path = report.write_results(args.results_dir, f"pubsub-{stamp}", data, markdown)
        print(markdown)
        log(f"results: {path}")
        return 0

    def _round(
        self,
        args: argparse.Namespace,
        modes: tuple[str, str],
        round_no: int,
        address: str,
        pids: tuple[int, int | None],
        duration: float,
        channels: int,
        logs: Path,
    ) -> Round:
        proxy_pid, plugin_pid = pids
        mode, label = modes  # the plugin's mode; how the results name it (with the tree)
        namespace = namespace_of(mode)
        plan = {
            "address": address,
            "namespace": namespace,
            "topic": TOPIC,
            "subscribers": args.subscribers,
            "channels": channels,
            "payload_size": args.payload_size,
        }
        log_path = logs / f"subscribers-{args.client}-{label.replace(' @', '-')}-{round_no}.log"
        subscribers: GrpcioSubscribers | H2loadSubscribers
        if args.client == "h2load":
            subscribers = H2loadSubscribers(plan, log_path, duration)
        else:
            subscribers = GrpcioSubscribers(plan, log_path)
        publisher = Publisher(address, namespace, args.payload_size)
        try:
            subscribers.start(publisher)
            busy0 = read_system_busy_seconds()
            proxy0 = read_cpu_seconds(proxy_pid)
            plugin0 = read_cpu_seconds(plugin_pid) if plugin_pid else 0.0
            latencies, sequences, (start, publish_s) = self._publish(publisher, args.rate, duration)
            proxy_publishing = read_cpu_seconds(proxy_pid) - proxy0
            got: Delivered = subscribers.finish(sequences, args.payload_size)
            until_delivered = time.monotonic() - start
            proxy_cpu = read_cpu_seconds(proxy_pid) - proxy0
            plugin_cpu = read_cpu_seconds(plugin_pid) - plugin0 if plugin_pid else None
            busy = read_system_busy_seconds() - busy0
        finally:
            publisher.close()
            subscribers.close()
        run = Round(
            mode=label,
            round=round_no,
            subscribers=args.subscribers,
            channels=channels,
            published=len(latencies),
            publish_s=publish_s,
            until_delivered_s=until_delivered,
            deliveries=got.deliveries,
            expected=got.expected,
            proxy_cpu_s=proxy_cpu,
            proxy_cpu_publishing_s=proxy_publishing,
            plugin_cpu_s=plugin_cpu,
            client_cpu_s=got.client_cpu_s,
            other_cpu_s=max(0.0, busy - proxy_cpu - (plugin_cpu or 0.0) - got.client_cpu_s),
            publish_p50_ms=_percentile_ms(latencies, 0.5),
            publish_p99_ms=_percentile_ms(latencies, 0.99),
            delivery_p50_ms=got.delivery_p50_ms,
            delivery_p99_ms=got.delivery_p99_ms,
            slowest_second=got.slowest_second,
            disconnected=got.disconnected,
            ended=got.ended,
        )
        log(
            f"round {round_no + 1} {label}: published {run.published / run.publish_s:,.0f}/s, "
            f"{run.deliveries_per_s:,.0f} deliveries/s "
            f"({run.deliveries / max(1, run.expected):.1%} of expected), "
            f"{run.cpu_us_per_delivery:.1f} µs CPU/delivery, publish p50 "
            f"{run.publish_p50_ms:.1f} ms p99 {run.publish_p99_ms:.1f} ms, "
            f"{run.disconnected} disconnected {run.ended or ''}, subscribers' CPU "
            f"{run.client_cpu_s / run.until_delivered_s:.0%}, other load "
            f"{run.other_cpu_s / run.until_delivered_s:.0%}"
        )
        return run

    @staticmethod
    def _publish(
        publisher: Publisher, rate: float, duration: float
    ) -> tuple[list[int], list[int], tuple[float, float]]:
        """Publish on a fixed schedule: latencies (ns), sequence numbers, and (start, seconds
        taken)."""
        count = max(1, round(rate * duration))
        period = 1.0 / rate
        latencies, sequences = [], []
        start = time.monotonic()
        for index in range(count):
            wait = start + index * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            latency, sequence = publisher.publish(index)
            latencies.append(latency)
            sequences.append(sequence)
        return latencies, sequences, (start, time.monotonic() - start)


def summarize(rounds: list[Round], modes: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for mode in modes:
        rs = [r for r in rounds if r.mode == mode]

        def med(values: list[float]) -> float:
            return report.median(values)

        def med_or_none(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return report.median(known) if known else None

        out[mode] = {
            "rounds": len(rs),
            "published_per_s": med([r.published / r.publish_s for r in rs]),
            "deliveries_per_s": med([r.deliveries_per_s for r in rs]),
            "deliveries_per_s_min": min(r.deliveries_per_s for r in rs),
            "deliveries_per_s_max": max(r.deliveries_per_s for r in rs),
            "delivered_share": med([r.deliveries / max(1, r.expected) for r in rs]),
            "cpu_us_per_delivery": med([r.cpu_us_per_delivery for r in rs]),
            "proxy_cpu_share": med([r.proxy_cpu_publishing_s / r.publish_s for r in rs]),
            "plugin_cpu_share": None
            if rs[0].plugin_cpu_s is None
            else med([(r.plugin_cpu_s or 0.0) / r.until_delivered_s for r in rs]),
            "client_cpu_share": med([r.client_cpu_s / r.until_delivered_s for r in rs]),
            "other_cpu_share": med([r.other_cpu_s / r.until_delivered_s for r in rs]),
            "publish_p50_ms": med([r.publish_p50_ms for r in rs]),
            "publish_p99_ms": med([r.publish_p99_ms for r in rs]),
            "delivery_p50_ms": med_or_none([r.delivery_p50_ms for r in rs]),
            "delivery_p99_ms": med_or_none([r.delivery_p99_ms for r in rs]),
            "slowest_second": med_or_none([r.slowest_second for r in rs]),
            "disconnected_max": max(r.disconnected for r in rs),
            # From the last publish to the last delivery (grpcio subscribers: h2load only
            # reports when its fixed run ends).
            "catch_up_s": med([r.until_delivered_s - r.publish_s for r in rs]),
        }
    return out


def table(
    summary: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    duration: float,
    channels: int,
    calibration_us: float,
    env: dict[str, Any],
) -> str:
    header = [
        "mode",
        "published/s",
        "deliveries/s (min..max)",
        "delivered",
        "CPU µs/delivery",
        "proxy CPU while publishing",
        "subscriber CPU",
        "other CPU",
        "publish p50/p99 ms",
        "delivery p50/p99 ms",
        "slowest second",
        "disconnected",
    ]
    rows = []
    for mode, m in summary.items():
        proxy = f"{m['proxy_cpu_share']:.0%}"
        if m["plugin_cpu_share"] is not None:
            proxy += f" + sidecar {m['plugin_cpu_share']:.0%}"
        rows.append(
            [
                mode,
                f"{m['published_per_s']:,.0f}",
                f"{m['deliveries_per_s']:,.0f} ({m['deliveries_per_s_min']:,.0f}"
                f"..{m['deliveries_per_s_max']:,.0f})",
                f"{m['delivered_share']:.1%}",
                f"{m['cpu_us_per_delivery']:.1f}",
                proxy,
                f"{m['client_cpu_share']:.0%}",
                f"{m['other_cpu_share']:.0%}",
                f"{m['publish_p50_ms']:.1f} / {m['publish_p99_ms']:.1f}",
                "-"
                if m["delivery_p50_ms"] is None
                else f"{m['delivery_p50_ms']:.1f} / {m['delivery_p99_ms']:.1f}",
                "-" if m["slowest_second"] is None else f"{m['slowest_second']:,.0f}",
                str(m["disconnected_max"]),
            ]
        )
    grpcio = args.client == "grpcio"
    # Sustained: published at the rate asked, every message delivered to every stream, none
    # disconnected, and (where the subscribers can tell) the last one within a second.
    target = all(
        m["published_per_s"] >= 0.99 * args.rate
        and m["delivered_share"] >= 0.999
        and m["disconnected_max"] == 0
        and (not grpcio or m["catch_up_s"] <= 1.0)
        for m in summary.values()
    )
    at_target = (
        args.subscribers >= TARGET["subscribers"]
        and args.rate >= TARGET["rate"]
        and args.payload_size >= TARGET["payload_size"]
        and duration >= TARGET["duration"]
    )
    verdict = (
        ("PASS" if target else "**FAIL**")
        if at_target
        else "not judged (the target's load is 500 subscribers x 100/s x 1 KiB x 30 s)"
    )
    return (
        f"### pubsub: {args.subscribers} subscribers on {channels} connections, "
        f"{args.rate:g} messages/s of {args.payload_size} bytes for {duration:g} s\n\n"
        + report.markdown_table(header, rows)
        + f"\n\nTarget (sustained at the rate, every message delivered, none disconnected): "
        f"{verdict}. Subscribers: {env['subscriber_client']}. Calibration: "
        f"{calibration_us:.1f} CPU µs per sans-IO unary call (the `wire` suite's work). CPU "
        f"shares are of one core; the machine has {env['cpus']} CPUs, shared. Medians of "
        f"{summary[next(iter(summary))]['rounds']} round(s); {env['date_utc']}; commit "
        f"{env['git_commit']}; `{' '.join(env['command'])}`."
    )


register(PubsubSuite())
