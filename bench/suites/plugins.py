"""`plugins` suite: what a plugin call costs in-process, as a sidecar and as a remote service.

One `prism serve` process serves three namespaces backed by memstore: `inproc` (mode
in_process), `sidecar` (mode sidecar: a child process over a Unix socket) and `remote` (mode
remote: a `prism plugin serve memstore` process this suite starts, over TCP with mTLS both
ways, certificates from trustme). Everything runs side by side in one run:

- **latency**: a separate load-client process (`bench.plugin_client`, grpcio sync) makes
  sequential closed-loop `Execute` calls, `set` then `get` with 100-byte values, in rounds that
  rotate the namespace order. Per call: perf_counter_ns. Per batch: p50/p99, and the CPU time
  (utime + stime from /proc/<pid>/stat) of the proxy and of the plugin process. Reported: the
  medians over rounds, the added p50/p99 over in-process (median of the per-round differences),
  and pass/fail against ARCHITECTURE.md §7, in µs and on the day's calibration. Per batch also:
  each process's run-queue wait and context switches (where the time goes).
- **calibration** (bench.calibration): a quick one at the start of every round, in the load
  client, and a full one (with prism's sans-IO cost per call) before and after: fixed code whose
  cost tracks what the machine charges today for a hop, so results from two days compare.
- **throughput**: h2load, one connection with 16 concurrent streams, `get` for a few seconds
  per namespace: req/s and CPU per request.
- **recovery**: bench.plugin_recovery.

`--baseline DIR` runs a second proxy and remote plugin from another tree (an export of an
earlier commit) beside this one, in the same rounds: before/after figures from one run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import h2load, plugin_recovery, report
from bench.errors import BenchError
from bench.plugin_report import (
    NAMESPACES,
    OPS,
    calibration_table,
    comparison_table,
    latency_table,
    summarize_latency,
    summarize_throughput,
    throughput_table,
    time_table,
    verdicts,
)
from bench.procs import ROOT, ServerProcess, read_cpu_seconds, read_system_busy_seconds
from bench.suites import register

PACKAGES = ("grpcio", "protobuf", "betterproto2", "h2", "trio", "trustme", "prism-proxy")
#: The tree label of `--baseline DIR`'s processes ("" is the tree under test).
BASELINE_TREE = "baseline"


def log(message: str) -> None:
    print(f"[bench plugins] {message}", file=sys.stderr, flush=True)


class PrismProcess(ServerProcess):
    """`python -m prism.cli.main ARGS`: the `prism` command, from this interpreter; with `root`,
    `prism` is imported from that tree first (its sidecars inherit PYTHONPATH)."""

    def __init__(
        self,
        name: str,
        args: Callable[[int], list[str]],
        log_path: Path,
        root: Path | None = None,
    ) -> None:
        super().__init__(name, "prism.cli.main", [], log_path, root)
        self.argv = [sys.executable, "-m", "prism.cli.main", *args(self.port)]


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`: /proc/<pid>/task/*/children, else a scan of /proc/*/stat."""
    task_dir = Path(f"/proc/{pid}/task")
    files = list(task_dir.glob("*/children"))
    pids: set[int] = set()
    if files:
        for f in files:
            try:
                pids.update(int(p) for p in f.read_text().split())
            except FileNotFoundError:
                continue
        return sorted(pids)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of proc(5), ppid
            pids.add(int(stat.parent.name))
    return sorted(pids)


def sidecar_pid(proxy_pid: int) -> int:
    """The proxy's serving sidecar: the older of its children running prism.hosting.launcher
    (the younger is the warm standby)."""
    found = plugin_recovery.sidecars(proxy_pid, child_pids)
    if not 1 <= len(found) <= 2:
        raise BenchError(
            f"expected a sidecar (and its standby) under the proxy (pid {proxy_pid}), found {found}"
        )
    return found[0]


@dataclass(frozen=True)
class Certs:
    plugin_ca: Path
    plugin_cert: Path
    plugin_key: Path
    proxy_ca: Path
    proxy_cert: Path
    proxy_key: Path


def make_certs(directory: Path) -> Certs:
    """Two trustme CAs: one signs the remote plugin's server certificate (for 127.0.0.1), the
    other the proxy's client certificate; each side trusts only the CA of the other."""
    import trustme

    plugin_ca, proxy_ca = trustme.CA(), trustme.CA()
    server = plugin_ca.issue_cert("127.0.0.1", "localhost")
    client = proxy_ca.issue_cert("prism-proxy.bench")
    certs = Certs(*(directory / n for n in (
        "plugin-ca.pem", "plugin.pem", "plugin.key", "proxy-ca.pem", "proxy.pem", "proxy.key"
    )))  # fmt: skip
    plugin_ca.cert_pem.write_to_path(str(certs.plugin_ca))
    server.cert_chain_pems[0].write_to_path(str(certs.plugin_cert))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(certs.plugin_cert), append=True)
    server.private_key_pem.write_to_path(str(certs.plugin_key))
    proxy_ca.cert_pem.write_to_path(str(certs.proxy_ca))
    client.cert_chain_pems[0].write_to_path(str(certs.proxy_cert))
    client.private_key_pem.write_to_path(str(certs.proxy_key))
    return certs


def proxy_config(
    listen_port: int, remote_port: int, certs: Certs, runtime_dir: Path, root: Path = ROOT
) -> str:
    """The proxy's YAML (JSON is YAML): three memstore namespaces, one per deployment model;
    `root` is the tree the proxy runs from."""
    namespaces = []
    for name, mode in NAMESPACES.items():
        plugin: dict[str, Any] = {"name": "memstore", "mode": mode}
        if mode == "remote":
            plugin["endpoint"] = f"127.0.0.1:{remote_port}"
            plugin["tls"] = {
                "ca": str(certs.plugin_ca),
                "cert": str(certs.proxy_cert),
                "key": str(certs.proxy_key),
                "server_hostname": "127.0.0.1",
            }
        # The load generators send no credentials.
        namespaces.append({"name": name, "plugin": plugin, "access": {"anonymous": True}})
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{listen_port}",
        "shutdown_grace": 2,
        "runtime_dir": str(runtime_dir),
        "namespaces": namespaces,
    }
    if _has_admin_api(root):
        # Its default listener is a fixed port (another proxy on this machine may hold it), and
        # it plays no part in a call.
        config["admin"] = {"enabled": False}
    return json.dumps(config, indent=2) + "\n"


def _has_admin_api(root: Path) -> bool:
    """Whether the config of the proxy in `root` has an `admin` section (unknown fields are
    errors), read from its source: the config layer moved from prism.proxy to prism.config."""
    sources = [*(root / "prism" / "config").glob("*.py"), root / "prism" / "proxy" / "config.py"]
    return any(
        "class AdminConfig" in path.read_text(errors="replace")
        for path in sources
        if path.is_file()
    )


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class ThroughputRun:
    namespace: str
    round: int
    tree: str
    req_per_s: float
    succeeded: int
    finished_s: float
    proxy_cpu_s: float
    plugin_cpu_s: float | None
    client_cpu_s: float
    other_cpu_s: float
    h2load_command: list[str] = field(default_factory=list)


def measure_throughput(
    h2: str,
    url: str,
    body: Path,
    load: h2load.Load,
    response_size: int,
    namespace: str,
    round_no: int,
    pids: tuple[int, int | None],
    tree: str = "",
) -> ThroughputRun:
    proxy_pid, plugin_pid = pids
    busy0 = read_system_busy_seconds()
    proxy0 = read_cpu_seconds(proxy_pid)
    plugin0 = read_cpu_seconds(plugin_pid) if plugin_pid else 0.0
    result = h2load.run(h2, url, body, load)
    proxy = read_cpu_seconds(proxy_pid) - proxy0
    plugin = read_cpu_seconds(plugin_pid) - plugin0 if plugin_pid else None
    busy = read_system_busy_seconds() - busy0
    # h2load.run checks DATA >= succeeded x request body; a get response is longer, so check
    # with its own size: a call that failed (non-OK grpc-status) carries no message.
    frame = response_size + 5
    if result.data_bytes < result.succeeded * frame:
        missing = (result.succeeded * frame - result.data_bytes) / frame
        raise BenchError(
            f"{namespace}: h2load received {result.data_bytes} DATA bytes for {result.succeeded} "
            f"responses of {frame}: ~{missing:.0f} calls failed (non-OK grpc-status)"
        )
    return ThroughputRun(
        namespace=namespace,
        round=round_no,
        tree=tree,
        req_per_s=result.req_per_s,
        succeeded=result.succeeded,
        finished_s=result.finished_s,
        proxy_cpu_s=proxy,
        plugin_cpu_s=plugin,
        client_cpu_s=result.client_cpu_s,
        other_cpu_s=max(0.0, busy - proxy - (plugin or 0.0) - result.client_cpu_s),
        h2load_command=result.command,
    )


@dataclass
class _Tree:
    """One proxy (and its remote plugin) under measurement: this tree's, or `--baseline`'s."""

    label: str
    proxy: PrismProcess
    remote: PrismProcess
    root: Path | None
    pids: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    sidecar: int = 0

    @property
    def address(self) -> str:
        return f"{self.proxy.host}:{self.proxy.port}"

    def start(self) -> None:
        self.remote.start()
        self.proxy.start(timeout_s=60)
        self.sidecar = sidecar_pid(self.proxy.pid)
        self.pids = {
            "inproc": (self.proxy.pid, None),
            "sidecar": (self.proxy.pid, self.sidecar),
            "remote": (self.proxy.pid, self.remote.pid),
        }
        log(
            f"{self.label or 'this tree'}: proxy pid {self.proxy.pid} on port {self.proxy.port}, "
            f"sidecar pid {self.sidecar}, remote plugin pid {self.remote.pid} on port "
            f"{self.remote.port}" + (f" (prism from {self.root})" if self.root else "")
        )

    def check(self) -> None:
        for process in (self.proxy, self.remote):
            process.check_alive()
        if sidecar_pid(self.proxy.pid) != self.sidecar:
            raise BenchError(
                f"{self.label or 'this tree'}: the sidecar was restarted during the run: see "
                f"{self.proxy.log_path}"
            )

    def stop(self) -> None:
        self.proxy.stop()
        self.remote.stop()


def _make_tree(label: str, root: Path | None, tmp: Path, certs: Certs, logs: Path) -> _Tree:
    def remote_args(port: int) -> list[str]:
        return [
            "plugin", "serve", "memstore", "--listen", f"127.0.0.1:{port}",
            "--tls-cert", str(certs.plugin_cert), "--tls-key", str(certs.plugin_key),
            "--tls-client-ca", str(certs.proxy_ca),
        ]  # fmt: skip

    prefix = f"{label}-" if label else ""
    remote = PrismProcess(
        f"{prefix}remote-plugin", remote_args, logs / f"{prefix}remote-plugin.log", root
    )
    runtime = tmp / f"{prefix}run"
    runtime.mkdir(mode=0o700)
    config_path = tmp / f"{prefix}prism.yaml"
    proxy = PrismProcess(
        f"{prefix}proxy",
        lambda port: ["serve", "--config", str(config_path)],
        logs / f"{prefix}proxy.log",
        root,
    )
    config_path.write_text(proxy_config(proxy.port, remote.port, certs, runtime, root or ROOT))
    shutil.copy(config_path, logs / config_path.name)
    return _Tree(label, proxy, remote, root)


def _calibrate(root: Path | None) -> dict[str, Any]:
    """A full calibration with prism's sans-IO cost (of `root`'s prism), in its own process."""
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.calibration", "--wire"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"the calibration failed (exit status {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


class PluginsSuite:
    name = "plugins"
    summary = (
        "plugin calls: added p50/p99 latency and CPU per call of sidecar and remote (mTLS) over "
        "in-process, memstore set/get, with a same-run calibration; concurrent req/s; recovery"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--only", choices=["latency", "throughput", "recovery"], help="run one part"
        )
        parser.add_argument(
            "--baseline",
            type=Path,
            metavar="DIR",
            help="also run a proxy and remote plugin with `prism` from DIR (an export of an "
            "earlier commit, e.g. `git archive main | tar -x -C DIR`), in the same rounds: "
            "before/after figures from one run",
        )
        parser.add_argument(
            "--kills",
            type=int,
            help="recovery: SIGKILLs of the sidecar under load (default 10, --quick 3)",
        )
        parser.add_argument(
            "--calls",
            type=int,
            help="latency: calls per namespace and op per round (default 2000, --quick 300)",
        )
        parser.add_argument(
            "--warmup",
            type=int,
            help="latency: unmeasured calls per namespace and op first (default 500, --quick 100)",
        )
        parser.add_argument(
            "--value-size", type=int, default=100, help="bytes per value (default 100)"
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=16,
            help="throughput: concurrent streams on one connection (default 16)",
        )
        parser.add_argument(
            "--duration",
            type=float,
            help="throughput: seconds per namespace and round (default 5, --quick 1)",
        )
        parser.add_argument(
            "--no-calibration",
            action="store_true",
            help="latency: skip the per-round calibration (bench.calibration)",
        )

    def run(self, args: argparse.Namespace) -> int:
        for module, why in (("grpc", "grpcio"), ("trustme", "trustme")):
            if importlib.util.find_spec(module) is None:
                raise BenchError(f"{why} is not installed (use `nox -s bench`)")
        if not importlib.metadata.entry_points(group="prism.plugins", name="memstore"):
            raise BenchError(
                "the memstore plugin is not installed (pip install -e plugins/memstore)"
            )
        for option in ("calls", "warmup", "concurrency", "duration"):
            number = getattr(args, option)
            if number is not None and number <= 0 and not (option == "warmup" and number == 0):
                raise BenchError(f"--{option} must be positive")
        baseline_root: Path | None = None
        if args.baseline is not None:
            baseline_root = args.baseline.resolve()
            if not (baseline_root / "prism" / "cli" / "main.py").is_file():
                raise BenchError(f"--baseline {baseline_root}: no prism/cli/main.py there")
        do_latency = args.only in (None, "latency")
        do_throughput = args.only in (None, "throughput")
        do_recovery = args.only in (None, "recovery")
        h2 = h2load.find_h2load() if do_throughput else None
        repeat: int = args.repeat or (1 if args.quick else 5)
        calls: int = args.calls or (300 if args.quick else 2000)
        warmup: int = args.warmup if args.warmup is not None else (100 if args.quick else 500)
        duration: float = args.duration or (1.0 if args.quick else 5.0)
        load = h2load.Load(clients=1, streams=args.concurrency, duration_s=duration)
        stamp = report.timestamp()
        results_dir: Path = args.results_dir
        logs = results_dir / "logs" / f"plugins-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        env = report.environment(
            PACKAGES,
            {
                "h2load": h2load.h2load_version(h2) if h2 else None,
                "repeat": repeat,
                "latency_calls": calls,
                "latency_warmup": warmup,
                "value_size": args.value_size,
                "throughput_load": asdict(load),
                "client": "grpcio sync (bench.plugin_client), one channel, bytes in/out",
                "baseline": str(baseline_root) if baseline_root else None,
                "baseline_commit": _git_commit(baseline_root) if baseline_root else None,
            },
        )
        log(f"{repeat} round(s); logs in {logs}")
        data: dict[str, Any] = {"suite": self.name, "environment": env, "namespaces": NAMESPACES}
        parts: list[str] = []
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp_name:
            tmp = Path(tmp_name)
            certs = make_certs(tmp)
            trees = [_make_tree("", None, tmp, certs, logs)]
            if baseline_root is not None:
                trees.append(_make_tree(BASELINE_TREE, baseline_root, tmp, certs, logs))
            try:
                for tree in trees:
                    tree.start()
                sizes = {t.label: self._check(t.address, args.value_size) for t in trees}
                calibration: dict[str, dict[str, Any]] = {}
                if do_latency:
                    for t in trees:
                        calibration[f"before ({t.label or 'this tree'})"] = _calibrate(t.root)
                    self._latency(args, trees, repeat, calls, warmup, data, parts)
                if do_throughput:
                    assert h2 is not None
                    runs: list[ThroughputRun] = []
                    for t in trees:
                        runs += self._throughput(h2, t, sizes[t.label], load, repeat, tmp, args)
                    data["throughput"] = {"runs": [asdict(r) for r in runs]}
                    for t in trees:
                        tmedians = summarize_throughput(runs, t.label)
                        data["throughput"][t.label or "this"] = tmedians
                        parts.append(throughput_table(tmedians, load, _title(t.label)))
                for t in trees:
                    self._check(t.address, args.value_size)  # still answering after the load?
                    t.check()
                if do_latency:
                    calibration["after"] = _calibrate(None)
                    data["calibration"] = {
                        "runner": calibration,
                        "rounds": data["latency"]["calibration"],
                    }
                    parts.append(calibration_table(data["latency"]["calibration"], calibration))
                if do_recovery:
                    kills = args.kills or (3 if args.quick else 10)
                    log(f"recovery: {kills} SIGKILLs of the sidecar under load")
                    this = trees[0]
                    recovery = plugin_recovery.run(
                        this.address, this.proxy.pid, child_pids, kills, this.proxy.log_path
                    )
                    data["recovery"] = recovery
                    parts.append(plugin_recovery.table(recovery))
                    this.proxy.check_alive()
                    outages = args.kills or (3 if args.quick else 5)
                    log(f"recovery: {outages} outages of the remote plugin service under load")
                    remote = plugin_recovery.run_remote(this.address, this.remote, outages)
                    data["remote_recovery"] = remote
                    parts.append(plugin_recovery.remote_table(remote))
                    this.proxy.check_alive()
            finally:
                for t in trees:
                    t.stop()
        markdown = "\n\n".join(parts)
        markdown += (
            f"\n\nMedians of {repeat} round(s); {env['date_utc']}; commit {env['git_commit']}"
            + (f" (baseline: {baseline_root}, {env['baseline_commit']})" if baseline_root else "")
            + f"; {env['cpus']} CPUs ({env['cpu_model']}), load average at start "
            f"{env['loadavg_at_start'][0]:.1f}; client, proxy and plugins on the same machine; "
            f"`{' '.join(env['command'])}`."
        )
        path = report.write_results(results_dir, f"plugins-{stamp}", data, markdown)
        print(markdown)
        log(f"results: {path}")
        return 0

    def _latency(
        self,
        args: argparse.Namespace,
        trees: list[_Tree],
        repeat: int,
        calls: int,
        warmup: int,
        data: dict[str, Any],
        parts: list[str],
    ) -> None:
        plan = {
            "address": trees[0].address,
            "targets": [
                {
                    "namespace": ns,
                    "proxy_pid": p[0],
                    "plugin_pid": p[1],
                    "tree": t.label,
                    "address": t.address,
                }
                for t in trees
                for ns, p in t.pids.items()
            ],
            "rounds": repeat,
            "calls": calls,
            "warmup": warmup,
            "value_size": args.value_size,
            "calibrate": not args.no_calibration,
        }
        result = self._run_client(plan, calls, repeat)
        data["latency"] = {"plan": plan, **result}
        per_tree = {}
        for t in trees:
            medians = summarize_latency(result["batches"], repeat, t.label, result["calibration"])
            per_tree[t.label] = medians
            data["latency"][t.label or "this"] = {"medians": medians, "verdicts": verdicts(medians)}
            parts.append(latency_table(medians, args.value_size, _title(t.label)))
            parts.append("\n".join(verdicts(medians)))
            parts.append(time_table(medians, _title(t.label)))
        if BASELINE_TREE in per_tree:
            parts.append(comparison_table(per_tree[""], per_tree[BASELINE_TREE]))

    @staticmethod
    def _check(address: str, value_size: int) -> dict[str, dict[str, int]]:
        """A real set + get on every namespace (grpcio): OK and the value back. Response sizes."""
        import grpc

        from bench import plugin_client

        with grpc.insecure_channel(address) as channel:
            call = plugin_client.execute_call(channel)
            return {ns: plugin_client.check_namespace(call, ns, value_size) for ns in NAMESPACES}

    @staticmethod
    def _run_client(plan: dict[str, Any], calls: int, repeat: int) -> dict[str, Any]:
        command = [sys.executable, "-m", "bench.plugin_client"]
        targets = len(plan["targets"])
        # Generous: 20 ms per call would already be 10x slower than anything seen.
        timeout = 60 + 5 * repeat + targets * len(OPS) * (calls * repeat + plan["warmup"]) * 0.02
        try:
            proc = subprocess.run(
                command, input=json.dumps(plan), stdout=subprocess.PIPE, text=True,
                cwd=ROOT, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"the load client did not finish in {timeout:.0f}s") from exc
        if proc.returncode != 0:
            raise BenchError(f"the load client exited with {proc.returncode} (see above)")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    @staticmethod
    def _throughput(
        h2: str,
        tree: _Tree,
        sizes: dict[str, dict[str, int]],
        load: h2load.Load,
        repeat: int,
        tmp: Path,
        args: argparse.Namespace,
    ) -> list[ThroughputRun]:
        from bench import plugin_client

        proxy = tree.proxy
        url = f"http://{proxy.host}:{proxy.port}{plugin_client.METHOD}"
        bodies = {}
        for ns in NAMESPACES:
            body = tmp / f"get-{ns}.bin"
            body.write_bytes(_grpc_frame(plugin_client.requests(ns, "get", args.value_size)[0]))
            bodies[ns] = body
        warm = h2load.Load(clients=1, streams=load.streams, requests=500 if args.quick else 3000)
        names = list(NAMESPACES)
        runs = []
        for round_no in range(repeat):
            shift = round_no % len(names)
            for ns in names[shift:] + names[:shift]:
                if round_no == 0:
                    h2load.run(h2, url, bodies[ns], warm)
                run = measure_throughput(
                    h2, url, bodies[ns], load, sizes[ns]["get"], ns, round_no, tree.pids[ns],
                    tree.label,
                )  # fmt: skip
                runs.append(run)
                proxy.check_alive()
                where = f"{tree.label}/{ns}" if tree.label else ns
                log(
                    f"round {round_no + 1}/{repeat} throughput "
                    f"{where:8} {run.req_per_s:8,.0f} req/s  "
                    f"proxy CPU {run.proxy_cpu_s / run.succeeded * 1e6:5.0f} µs/req  "
                    f"other load {run.other_cpu_s / run.finished_s:4.0%}"
                )
        return runs


def _title(label: str) -> str:
    return f" ({label})" if label else ""


def _git_commit(root: Path) -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip() or None if proc.returncode == 0 else None


register(PluginsSuite())
