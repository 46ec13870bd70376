"""`traffic` suite: a bystander's latency while a flood hits the same namespace, with and
without the namespace's concurrency cap (issue 9: "10,000 concurrent calls into one sidecar
namespace made other callers of that namespace wait over 2 s").

One `prism serve` process per variant, one namespace `kv` on memstore as a sidecar; the
variants differ only in `traffic.concurrency` (none, or the cap given by the options). A
bystander process (grpcio, its own connection) makes one Execute-get every 10 ms; after
`--idle-seconds` alone (its unloaded latency), a flood process (prism's Trio channel, 10
connections) sends `--waves` waves of `--calls` concurrent Execute-get calls to the same
namespace. The bystander's calls that started during the flood are its loaded latency; refused
calls (RESOURCE_EXHAUSTED from the cap) are counted apart and included in "all" percentiles.
Target (issue 9): with the cap on, the bystander's p99 within 5x its unloaded p99.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import report
from bench.errors import BenchError
from bench.procs import ROOT
from bench.suites import register
from bench.suites.plugins import PrismProcess

PACKAGES = ("grpcio", "h2", "trio", "prism-proxy")


def log(message: str) -> None:
    print(f"[bench traffic] {message}", file=sys.stderr, flush=True)


def proxy_config(port: int, runtime: Path, concurrency: dict[str, Any] | None) -> str:
    namespace: dict[str, Any] = {
        "name": "kv",
        "plugin": {"name": "memstore", "mode": "sidecar"},
        "access": {"anonymous": True},
    }
    if concurrency is not None:
        namespace["traffic"] = {"concurrency": concurrency}
    config = {
        "listen": f"127.0.0.1:{port}",
        "shutdown_grace": 2,
        "runtime_dir": str(runtime),
        "admin": {"enabled": False},
        "namespaces": [namespace],
    }
    return json.dumps(config, indent=2) + "\n"


def _client(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.traffic_client", *args]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_variant(
    name: str, concurrency: dict[str, Any] | None, args: argparse.Namespace, tmp: Path, logs: Path
) -> dict[str, Any]:
    runtime = tmp / f"{name}-run"
    runtime.mkdir(mode=0o700)
    config_path = tmp / f"{name}.json"
    proxy = PrismProcess(
        f"proxy-{name}", lambda port: ["serve", "--config", str(config_path)], logs / f"{name}.log"
    )
    config_path.write_text(proxy_config(proxy.port, runtime, concurrency))
    target = f"127.0.0.1:{proxy.port}"
    stop = tmp / f"{name}.stop"
    proxy.start()
    try:
        time.sleep(1.0)  # the sidecar's first health check
        bystander = subprocess.Popen(
            _client("bystander", target, "--seconds", "600", "--stop-file", str(stop)),
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        time.sleep(args.idle_seconds)
        flood_args = ["--calls", str(args.calls), "--waves", str(args.waves)]
        done = subprocess.run(
            _client("flood", target, *flood_args),
            stdout=subprocess.PIPE,
            cwd=ROOT,
            check=False,
            timeout=900,
        )
        time.sleep(0.5)
        stop.touch()
        out, _ = bystander.communicate(timeout=60)
        proxy.check_alive()
    finally:
        proxy.stop()
    if done.returncode != 0 or bystander.returncode != 0:
        raise BenchError(
            f"{name}: a client failed (flood {done.returncode}, bystander "
            f"{bystander.returncode}); proxy log {proxy.log_path}"
        )
    flood = json.loads(done.stdout)
    samples = json.loads(out)["samples"]
    idle = [lat for began, lat, status in samples if began < flood["start"] and status == "OK"]
    during = [(lat, status) for began, lat, status in samples
              if flood["start"] <= began <= flood["end"]]  # fmt: skip
    served = [lat for lat, status in during if status == "OK"]
    refused = sum(1 for _, status in during if status == "RESOURCE_EXHAUSTED")
    others = sum(1 for _, status in during if status not in ("OK", "RESOURCE_EXHAUSTED"))
    result = {
        "variant": name,
        "concurrency": concurrency,
        "flood_seconds": flood["end"] - flood["start"],
        "flood_statuses": flood["statuses"],
        "wave_seconds": flood["wave_seconds"],
        "idle_calls": len(idle),
        "idle_p50_ms": _ms(percentile(idle, 0.5)),
        "idle_p99_ms": _ms(percentile(idle, 0.99)),
        "loaded_calls": len(during),
        "loaded_refused": refused,
        "loaded_other_errors": others,
        "loaded_p50_ms": _ms(percentile([lat for lat, _ in during], 0.5)),
        "loaded_p99_ms": _ms(percentile([lat for lat, _ in during], 0.99)),
        "loaded_max_ms": _ms(max((lat for lat, _ in during), default=None)),
        "served_p99_ms": _ms(percentile(served, 0.99)),
        "loaded_over_1s": sum(1 for lat, _ in during if lat >= 1.0),
        "loaded_statuses": _count(status for _, status in during),
    }
    result["p99_ratio"] = report.ratio(result["loaded_p99_ms"], result["idle_p99_ms"])
    log(json.dumps(result))
    return result


def _count(statuses: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class TrafficSuite:
    name = "traffic"
    summary = (
        "a bystander's p99 on a sidecar namespace while 10,000 concurrent calls flood it, "
        "without and with the namespace's concurrency cap (issue 9: within 5x unloaded)"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--calls", type=int, default=10_000, help="calls per wave")
        parser.add_argument("--waves", type=int, default=3, help="flood waves (one after another)")
        parser.add_argument("--idle-seconds", type=float, default=5.0,
                            help="the bystander alone first (unloaded)")  # fmt: skip
        parser.add_argument("--max-in-flight", type=int, default=32)
        parser.add_argument("--max-queue", type=int, default=32)
        parser.add_argument("--queue-timeout", type=float, default=0.5)

    def run(self, args: argparse.Namespace) -> int:
        if args.quick:
            args.calls, args.waves, args.idle_seconds = 2_000, 1, 2.0
        args.repeat = args.repeat or (1 if args.quick else 3)
        cap = {
            "max_in_flight": args.max_in_flight,
            "max_queue": args.max_queue,
            "queue_timeout": args.queue_timeout,
        }
        runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp_name:
            tmp = Path(tmp_name)
            logs = args.results_dir / "traffic-logs"
            logs.mkdir(parents=True, exist_ok=True)
            for round_ in range(args.repeat):
                for name, concurrency in (("no-cap", None), ("cap", cap)):
                    log(f"round {round_ + 1}/{args.repeat}: {name}")
                    result = run_variant(f"{name}-{round_}", concurrency, args, tmp, logs)
                    result["variant"] = name
                    runs.append(result)
        markdown = _markdown(runs, args)
        print(markdown)
        data = {"environment": report.environment(PACKAGES), "args": vars(args), "runs": runs}
        path = report.write_results(args.results_dir, f"traffic-{report.timestamp()}", data,
                                    markdown)  # fmt: skip
        log(f"results: {path}")
        return 0


def _markdown(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    header = [
        "variant", "idle p50 ms", "idle p99 ms", "loaded p50 ms", "loaded p99 ms",
        "loaded max ms", "p99 ratio", "served p99 ms", "bystander calls (refused, errors, ≥ 1 s)",
        "flood s", "flood statuses",
    ]  # fmt: skip
    rows = []
    for run in runs:
        rows.append([
            run["variant"],
            report.fmt_num(run["idle_p50_ms"], 2),
            report.fmt_num(run["idle_p99_ms"], 2),
            report.fmt_num(run["loaded_p50_ms"], 2),
            report.fmt_num(run["loaded_p99_ms"], 2),
            report.fmt_num(run["loaded_max_ms"], 1),
            report.fmt_ratio(run["p99_ratio"]),
            report.fmt_num(run["served_p99_ms"], 2),
            f"{run['loaded_calls']} ({run['loaded_refused']}, {run['loaded_other_errors']}, "
            f"{run['loaded_over_1s']})",
            report.fmt_num(run["flood_seconds"], 2),
            ", ".join(f"{k} {v}" for k, v in sorted(run["flood_statuses"].items())),
        ])  # fmt: skip
    title = (
        f"traffic: {args.waves} wave(s) of {args.calls} concurrent calls, cap max_in_flight "
        f"{args.max_in_flight}, max_queue {args.max_queue}, queue_timeout {args.queue_timeout} s"
    )
    return f"### {title}\n\n" + report.markdown_table(header, rows)


register(TrafficSuite())
