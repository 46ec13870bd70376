"""`backends` suite: real backends through the proxy against their own Python clients.

For each registered backend (one module each: `redis.py`, `memcached.py`, `postgres.py`; add
yours to `BACKEND_MODULES`), one run starts the real server (the acceptance framework's
fixtures), one `prism serve` with the backend's plugin in-process and as a sidecar (plus
memstore in-process: the proxy's own cost, a plugin that does no I/O), and a separate
load-client process (`bench.backends_client`) that, rounds interleaved, times

- **GET**: `get` through the proxy (grpcio sync) and the backend's client's own GET called
  directly, at 1 and 32 concurrent callers: p50/p99, calls/s, CPU µs per call of the proxy
  (with its sidecar) and of the backend server; the added p50 of each proxy path over direct;
- **bulk**: a 100-key `get_many` through the proxy against the direct client's one-round-trip
  multi-get (Redis MGET, memcached's multi-key get).

Targets (ARCHITECTURE.md §7): in-process added p50 ≤ 0.3 ms over the backend's own client;
get_many ≤ 2x the direct multi-get. The report also gives the same-run calibration (a fixed
pure-Python loop) and each path's added p50 over memstore in-process, which is the plugin's
share of it.

`--baseline DIR` also starts a second proxy from another tree (an export of another commit:
its `prism` and `plugins/*/src` first on PYTHONPATH) with the same backends in-process and its
own memstore, measured in the same rounds as path "baseline": before and after in one run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.errors import BenchError
from bench.procs import ROOT
from bench.suites import register as register_suite

#: One module per backend; each calls `register(Backend(...))` when imported.
BACKEND_MODULES = (
    "bench.suites.backends.redis",
    "bench.suites.backends.memcached",
    "bench.suites.backends.postgres",
)
TARGET_ADDED_P50_US = 300.0
TARGET_BULK_RATIO = 2.0
MODES = ("direct", "in_process", "sidecar", "baseline")
LABELS = {
    "direct": "direct",
    "in_process": "in-process",
    "sidecar": "sidecar",
    "baseline": "in-process (baseline)",
}
PACKAGES = ("grpcio", "trio", "h2", "betterproto2", "prism-proxy", "hiredis")


class Direct:
    """The backend's own client, called directly by the load client (its threads share it)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        raise NotImplementedError

    def seed(self, keys: Sequence[str], value: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class Running:
    """A started backend server, in the runner."""

    def namespaces(self) -> dict[str, dict[str, Any]]:
        """Proxy namespaces (name → the namespace's YAML minus its name): modes in_process
        and sidecar, names ending in the mode."""
        raise NotImplementedError

    def direct_spec(self) -> dict[str, Any]:
        """What the load client's `Direct` needs (JSON)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        process = self.server.server.process  # type: ignore[attr-defined]
        assert process is not None
        pid: int = process.pid
        return pid

    def stop(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Backend:
    name: str
    label: str  # "Redis GET"
    direct_label: str  # the direct client, as the tables name it
    bulk_label: str  # its multi-get
    start: Callable[[Path], Running]
    direct: Callable[[dict[str, Any]], Direct]
    packages: tuple[str, ...] = ()


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} registered twice")
    BACKENDS[backend.name] = backend
    return backend


def load_backends() -> dict[str, Backend]:
    for module in BACKEND_MODULES:
        importlib.import_module(module)
    return BACKENDS


def _tree_commit(root: Path) -> str:
    """A checkout's commit, or an export's (`git archive` has none: its COMMIT file's)."""
    from bench.suites.plugins import _git_commit

    marker = root / "COMMIT"
    return _git_commit(root) or (marker.read_text().strip() if marker.is_file() else "unknown")


def log(message: str) -> None:
    print(f"[bench backends] {message}", file=sys.stderr, flush=True)


def _sidecar_pids(proxy_pid: int, plugin: str) -> list[int]:
    from bench.suites.plugins import child_pids

    found = []
    for pid in child_pids(proxy_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prism.hosting.launcher" in argv and plugin.encode() in argv:
            found.append(pid)
    return found


def _median(rows: list[dict[str, Any]], field: str) -> float:
    return report.median(r[field] for r in rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per (part, backend, mode, threads), and per round differences."""
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["part"], row["backend"], row["mode"], row["threads"]), []).append(
            row
        )
    out: dict[str, Any] = {}
    for (part, backend, mode, threads), group in groups.items():
        group.sort(key=lambda r: r["round"])
        entry: dict[str, Any] = {
            "rounds": len(group),
            "p50_us": _median(group, "p50_us"),
            "p99_us": _median(group, "p99_us"),
            "per_s": _median(group, "per_s"),
            "p50_us_range": [min(r["p50_us"] for r in group), max(r["p50_us"] for r in group)],
            "machine_busy_share": _median(group, "machine_busy_share"),
        }
        for who in ("proxy", "backend"):
            values = [r["cpu_us_per_call"][who] for r in group]
            entry[f"{who}_cpu_us"] = None if None in values else report.median(values)
        for base_mode, name in (("direct", "added"), ("floor", "over_floor")):
            floor_mode = "baseline" if mode == "baseline" else "in_process"
            base_key = (
                (part, backend, "direct", threads)
                if base_mode == "direct"
                else ("get", "memstore", floor_mode, threads)
            )
            base = {r["round"]: r for r in groups.get(base_key, [])}
            if mode == "direct" or not base or backend == "memstore":
                continue
            diffs = [r["p50_us"] - base[r["round"]]["p50_us"] for r in group if r["round"] in base]
            ratios = [r["p50_us"] / base[r["round"]]["p50_us"] for r in group if r["round"] in base]
            if diffs:
                entry[f"{name}_p50_us"] = report.median(diffs)
                entry[f"{name}_ratio"] = report.median(ratios)
        out[f"{part}/{backend}/{mode}/{threads}"] = entry
    return out


def _us(value: float | None) -> str:
    return report.fmt_num(value, 0)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.0f}"


def tables(medians: dict[str, Any], backends: list[Backend], concurrency: list[int]) -> list[str]:
    parts = []
    header = ["backend", "path", "callers", "p50 µs (min..max)", "p99 µs", "calls/s",
              "added p50 µs over direct", "over memstore µs", "proxy CPU µs/call",
              "server CPU µs/call", "target"]  # fmt: skip
    rows = []
    for threads in concurrency:
        for floor_mode in ("in_process", "baseline"):
            floor = medians.get(f"get/memstore/{floor_mode}/{threads}")
            if floor is not None:
                rows.append(["(proxy floor)", f"memstore {LABELS[floor_mode]}", str(threads),
                             f"{_us(floor['p50_us'])}", _us(floor["p99_us"]), _us(floor["per_s"]),
                             "-", "-", _us(floor["proxy_cpu_us"]), "-", "-"])  # fmt: skip
        for backend in backends:
            for mode in MODES:
                m = medians.get(f"get/{backend.name}/{mode}/{threads}")
                if m is None:
                    continue
                target = "-"
                if mode in ("in_process", "baseline") and threads == 1:
                    ok = m["added_p50_us"] <= TARGET_ADDED_P50_US
                    target = f"≤ {TARGET_ADDED_P50_US:.0f}: {'PASS' if ok else '**FAIL**'}"
                path = backend.direct_label if mode == "direct" else LABELS[mode]
                lo, hi = m["p50_us_range"]
                rows.append([
                    backend.label, path, str(threads), f"{_us(m['p50_us'])} ({_us(lo)}..{_us(hi)})",
                    _us(m["p99_us"]), _us(m["per_s"]), _signed(m.get("added_p50_us")),
                    _signed(m.get("over_floor_p50_us")), _us(m["proxy_cpu_us"]),
                    _us(m["backend_cpu_us"]), target,
                ])  # fmt: skip
    parts.append("### GET: through the proxy vs the backend's own client\n\n"
                 + report.markdown_table(header, rows))  # fmt: skip
    header = ["backend", "path", "p50 µs (min..max)", "p99 µs", "vs direct (p50 ratio)",
              "proxy CPU µs/call", "target"]  # fmt: skip
    rows = []
    for backend in backends:
        for mode in MODES:
            m = medians.get(f"bulk/{backend.name}/{mode}/1")
            if m is None:
                continue
            target = "-"
            if mode != "direct":
                ok = m["added_ratio"] <= TARGET_BULK_RATIO
                target = f"≤ {TARGET_BULK_RATIO:.0f}x: {'PASS' if ok else '**FAIL**'}"
            lo, hi = m["p50_us_range"]
            path = backend.bulk_label if mode == "direct" else f"get_many {LABELS[mode]}"
            rows.append([backend.name, path, f"{_us(m['p50_us'])} ({_us(lo)}..{_us(hi)})",
                         _us(m["p99_us"]),
                         "-" if mode == "direct" else report.fmt_ratio(m["added_ratio"]),
                         _us(m["proxy_cpu_us"]), target])  # fmt: skip
    parts.append("### 100-key bulk read: get_many through the proxy vs the direct multi-get\n\n"
                 + report.markdown_table(header, rows))  # fmt: skip
    return parts


class BackendsSuite:
    name = "backends"
    summary = (
        "real backends (Redis, Memcached, ...) through the proxy vs their own Python clients: "
        "GET at 1 and 32 callers, 100-key get_many vs MGET"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--backends", help="comma-separated (default: every registered one)")
        parser.add_argument("--calls", type=int, help="GETs per target per round (default 2000)")
        parser.add_argument("--bulk-calls", type=int, help="get_many per target (default 300)")
        parser.add_argument("--concurrency", default="1,32", help="callers (default 1,32)")
        parser.add_argument("--value-size", type=int, default=100, help="bytes (default 100)")
        parser.add_argument(
            "--baseline",
            type=Path,
            help="another tree (an export of another commit): its proxy and plugins in-process "
            "in the same rounds, as path 'baseline'",
        )

    def run(self, args: argparse.Namespace) -> int:
        known = load_backends()
        names = args.backends.split(",") if args.backends else list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BenchError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(known)}")
        for module in ("grpc", *(p for n in names for p in known[n].packages)):
            if importlib.util.find_spec(module) is None:
                raise BenchError(f"{module} is not installed (use `nox -s bench`)")
        backends = [known[n] for n in names]
        baseline_root: Path | None = None
        if args.baseline is not None:
            baseline_root = args.baseline.resolve()
            if not (baseline_root / "prism" / "cli" / "main.py").is_file():
                raise BenchError(f"--baseline {baseline_root}: no prism/cli/main.py there")
        concurrency = [int(c) for c in args.concurrency.split(",")]
        repeat = args.repeat or (1 if args.quick else 3)
        calls = args.calls or (200 if args.quick else 2000)
        bulk_calls = args.bulk_calls or (30 if args.quick else 300)
        stamp = report.timestamp()
        logs = args.results_dir / "logs" / f"backends-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        env = report.environment(
            (*PACKAGES, *(p for b in backends for p in b.packages)),
            {"repeat": repeat, "calls": calls, "bulk_calls": bulk_calls,
             "concurrency": concurrency, "value_size": args.value_size,
             "baseline": str(baseline_root) if baseline_root else None,
             "baseline_commit": _tree_commit(baseline_root) if baseline_root else None},
        )  # fmt: skip
        data: dict[str, Any] = {"suite": self.name, "environment": env}
        running: dict[str, Running] = {}
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp_name:
            tmp = Path(tmp_name)
            from bench.suites.plugins import PrismProcess

            config_path = tmp / "prism.yaml"
            proxy = PrismProcess(
                "proxy", lambda port: ["serve", "--config", str(config_path)], logs / "proxy.log"
            )
            base_config = tmp / "baseline.yaml"
            baseline = None
            if baseline_root is not None:
                baseline = PrismProcess(
                    "baseline-proxy",
                    lambda port: ["serve", "--config", str(base_config)],
                    logs / "baseline-proxy.log",
                    root=baseline_root,
                )
            try:
                for backend in backends:
                    running[backend.name] = backend.start(tmp)
                namespaces = [{"name": "memstore", "plugin": {"name": "memstore"}}]
                for run in running.values():
                    namespaces += [{"name": n, **ns} for n, ns in run.namespaces().items()]
                for ns in namespaces:  # the load generators send no credentials
                    ns["access"] = {"anonymous": True}
                runtime = tmp / "run"
                runtime.mkdir(mode=0o700)
                config = {
                    "listen": f"127.0.0.1:{proxy.port}",
                    "shutdown_grace": 2,
                    "runtime_dir": str(runtime),
                    "admin": {"enabled": False},
                    "namespaces": namespaces,
                }
                config_path.write_text(json.dumps(config, indent=2) + "\n")
                proxy.start(timeout_s=60)
                if baseline is not None:
                    (tmp / "base-run").mkdir(mode=0o700)
                    in_process = [n for n in namespaces if not n["name"].endswith("-sidecar")]
                    base = {
                        **config,
                        "listen": f"127.0.0.1:{baseline.port}",
                        "runtime_dir": str(tmp / "base-run"),
                        "namespaces": in_process,
                    }
                    base_config.write_text(json.dumps(base, indent=2) + "\n")
                    baseline.start(timeout_s=60)
                plan = {
                    "address": f"{proxy.host}:{proxy.port}",
                    "proxy_pid": proxy.pid,
                    "rounds": repeat,
                    "calls": calls,
                    "warmup": 100 if args.quick else 500,
                    "bulk_calls": bulk_calls,
                    "bulk_keys": 100,
                    "concurrency": concurrency,
                    "value_size": args.value_size,
                    "baseline": None
                    if baseline is None
                    else {"address": f"{baseline.host}:{baseline.port}", "pid": baseline.pid},
                    "backends": [
                        {
                            "name": name,
                            "namespaces": {m: f"{name}-{m}" for m in ("in_process", "sidecar")},
                            "direct_spec": run.direct_spec(),
                            "server_pid": run.pid,
                            "sidecar_pids": _sidecar_pids(proxy.pid, name),
                        }
                        for name, run in running.items()
                    ],
                }
                log(f"proxy pid {proxy.pid}; {repeat} round(s); logs in {logs}")
                result = self._client(plan)
                proxy.check_alive()
                if baseline is not None:
                    baseline.check_alive()
            finally:
                proxy.stop()
                if baseline is not None:
                    baseline.stop()
                for run in running.values():
                    run.stop()
        medians = summarize(result["rows"])
        data.update(result, medians=medians)
        cal, after = result["calibration"], result["calibration_after"]
        markdown = "\n\n".join(tables(medians, backends, concurrency))
        markdown += (
            f"\n\nCalibration (same run): a fixed pure-Python loop took "
            f"{cal['python_loop_ms']:.1f} ms before and {after['python_loop_ms']:.1f} ms after "
            f"(load average {cal['loadavg_1m']:.1f} → {after['loadavg_1m']:.1f}). Medians of "
            f"{repeat} round(s); {env['date_utc']}; commit {env['git_commit']}; {env['cpus']} "
            f"CPUs ({env['cpu_model']}); client, proxy, sidecars and servers on one machine; "
            f"`{' '.join(env['command'])}`."
            + (
                f" Baseline: {baseline_root} ({_tree_commit(baseline_root)})."
                if baseline_root
                else ""
            )
        )
        path = report.write_results(args.results_dir, f"backends-{stamp}", data, markdown)
        print(markdown)
        log(f"results: {path}")
        return 0

    @staticmethod
    def _client(plan: dict[str, Any]) -> dict[str, Any]:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.backends_client"], input=json.dumps(plan),
                stdout=subprocess.PIPE, text=True, cwd=ROOT, timeout=3600, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the load client did not finish within an hour") from exc
        if proc.returncode != 0:
            raise BenchError(f"the load client exited with {proc.returncode} (see above)")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result


register_suite(BackendsSuite())
