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
  and pass/fail against ARCHITECTURE.md §7.
- **throughput**: h2load, one connection with 16 concurrent streams, `get` for a few seconds
  per namespace: req/s and CPU per request.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
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
from bench.procs import ROOT, ServerProcess, read_cpu_seconds, read_system_busy_seconds
from bench.suites import register

#: Namespace name → plugin mode, in the order of the tables.
NAMESPACES = {"inproc": "in_process", "sidecar": "sidecar", "remote": "remote"}
LABELS = {"inproc": "in-process", "sidecar": "sidecar (Unix socket)", "remote": "remote (mTLS)"}
BASELINE = "inproc"
#: ARCHITECTURE.md §7: most added p50 latency over in-process, in µs.
TARGET_ADDED_P50_US = {"sidecar": 300.0, "remote": 600.0}
#: What RFC-008 claims for its Rust design (added latency), for the report.
RFC_CLAIMS = {"sidecar": "~1-2 ms", "remote": "~5-10 ms"}
PACKAGES = ("grpcio", "protobuf", "betterproto2", "h2", "trio", "trustme", "prism-proxy")
OPS = ("set", "get")


def log(message: str) -> None:
    print(f"[bench plugins] {message}", file=sys.stderr, flush=True)


class PrismProcess(ServerProcess):
    """`python -m prism.cli.main ARGS`: the `prism` command, from this interpreter."""

    def __init__(self, name: str, args: Callable[[int], list[str]], log_path: Path) -> None:
        super().__init__(name, "prism.cli.main", [], log_path)
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


def proxy_config(listen_port: int, remote_port: int, certs: Certs, runtime_dir: Path) -> str:
    """The proxy's YAML (JSON is YAML): three memstore namespaces, one per deployment model."""
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
        namespaces.append({"name": name, "plugin": plugin})
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{listen_port}",
        "shutdown_grace": 2,
        "runtime_dir": str(runtime_dir),
        "namespaces": namespaces,
    }
    if _has_admin_api():
        # Its default listener is a fixed port (another proxy on this machine may hold it), and
        # it plays no part in a call.
        config["admin"] = {"enabled": False}
    return json.dumps(config, indent=2) + "\n"


def _has_admin_api() -> bool:
    """Whether this proxy's config has an `admin` section (unknown fields are errors)."""
    try:
        from prism import config
    except ImportError:  # before the config layer moved out of prism.proxy
        from prism.proxy import config  # type: ignore[no-redef]

    return hasattr(config, "AdminConfig")


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class ThroughputRun:
    namespace: str
    round: int
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
        req_per_s=result.req_per_s,
        succeeded=result.succeeded,
        finished_s=result.finished_s,
        proxy_cpu_s=proxy,
        plugin_cpu_s=plugin,
        client_cpu_s=result.client_cpu_s,
        other_cpu_s=max(0.0, busy - proxy - (plugin or 0.0) - result.client_cpu_s),
        h2load_command=result.command,
    )


def _us(value: float | None) -> str:
    return report.fmt_num(value, 0)


def _signed_us(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.0f}"


def summarize_latency(batches: list[dict[str, Any]], rounds: int) -> dict[str, dict[str, Any]]:
    """Per "namespace/op": medians over rounds, and added latency over in-process (the median
    of each round's difference to that round's in-process batch)."""
    by_key = {(b["namespace"], b["op"], b["round"]): b for b in batches}
    out: dict[str, dict[str, Any]] = {}
    for ns in NAMESPACES:
        for op in OPS:
            rows = [by_key[ns, op, r] for r in range(rounds)]
            base = [by_key[BASELINE, op, r] for r in range(rounds)]

            def med(attr: str, rows: list[dict[str, Any]] = rows) -> float:
                return report.median(r[attr] for r in rows)

            def per_call(attr: str, rows: list[dict[str, Any]] = rows) -> float | None:
                if rows[0][attr] is None:
                    return None
                return report.median(r[attr] / r["calls"] * 1e6 for r in rows)

            m: dict[str, Any] = {
                "rounds": rounds,
                "calls_per_round": rows[0]["calls"],
                "p50_us": med("p50_us"),
                "p50_us_min": min(r["p50_us"] for r in rows),
                "p50_us_max": max(r["p50_us"] for r in rows),
                "p99_us": med("p99_us"),
                "p99_us_min": min(r["p99_us"] for r in rows),
                "p99_us_max": max(r["p99_us"] for r in rows),
                "mean_us": med("mean_us"),
                "proxy_cpu_us_per_call": per_call("proxy_cpu_s"),
                "plugin_cpu_us_per_call": per_call("plugin_cpu_s"),
                "client_cpu_us_per_call": per_call("client_cpu_s"),
                "other_cpu_share": report.median(r["other_cpu_s"] / r["wall_s"] for r in rows),
            }
            if ns != BASELINE:
                m["added_p50_us"] = report.median(
                    r["p50_us"] - b["p50_us"] for r, b in zip(rows, base, strict=True)
                )
                m["added_p99_us"] = report.median(
                    r["p99_us"] - b["p99_us"] for r, b in zip(rows, base, strict=True)
                )
                m["added_p50_us_min"] = min(
                    r["p50_us"] - b["p50_us"] for r, b in zip(rows, base, strict=True)
                )
                m["added_p50_us_max"] = max(
                    r["p50_us"] - b["p50_us"] for r, b in zip(rows, base, strict=True)
                )
                target = TARGET_ADDED_P50_US[ns]
                m["target_added_p50_us"] = target
                m["pass"] = m["added_p50_us"] <= target
            out[f"{ns}/{op}"] = m
    return out


def latency_table(medians: dict[str, dict[str, Any]], value_size: int) -> str:
    header = [
        "namespace",
        "op",
        "p50 µs (min..max)",
        "p99 µs (min..max)",
        "added p50 µs (min..max)",
        "added p99 µs",
        "proxy CPU µs/call",
        "plugin CPU µs/call",
        "client CPU µs/call",
        "other CPU",
        "target: added p50",
    ]
    rows = []
    for name, m in medians.items():
        ns, op = name.split("/")
        target = "-"
        if "target_added_p50_us" in m:
            verdict = "PASS" if m["pass"] else "**FAIL**"
            target = f"≤ {m['target_added_p50_us']:,.0f} µs: {verdict}"
        rows.append(
            [
                LABELS[ns],
                op,
                f"{_us(m['p50_us'])} ({_us(m['p50_us_min'])}..{_us(m['p50_us_max'])})",
                f"{_us(m['p99_us'])} ({_us(m['p99_us_min'])}..{_us(m['p99_us_max'])})",
                "-"
                if ns == BASELINE
                else f"{_signed_us(m['added_p50_us'])} "
                f"({_signed_us(m['added_p50_us_min'])}..{_signed_us(m['added_p50_us_max'])})",
                "-" if ns == BASELINE else _signed_us(m["added_p99_us"]),
                _us(m["proxy_cpu_us_per_call"]),
                _us(m["plugin_cpu_us_per_call"]) if m["plugin_cpu_us_per_call"] else "(in proxy)",
                _us(m["client_cpu_us_per_call"]),
                f"{m['other_cpu_share'] * 100:.0f}%",
                target,
            ]
        )
    first = next(iter(medians.values()))
    return (
        f"### latency: sequential Execute, memstore {'/'.join(OPS)}, {value_size}-byte values, "
        f"{first['calls_per_round']} calls per namespace and op per round\n\n"
        + report.markdown_table(header, rows)
    )


def summarize_throughput(runs: list[ThroughputRun]) -> dict[str, dict[str, Any]]:
    out = {}
    for ns in NAMESPACES:
        rs = [r for r in runs if r.namespace == ns]
        rates = [r.req_per_s for r in rs]
        out[ns] = {
            "runs": len(rs),
            "req_per_s": report.median(rates),
            "req_per_s_min": min(rates),
            "req_per_s_max": max(rates),
            "proxy_cpu_us_per_req": report.median(r.proxy_cpu_s / r.succeeded * 1e6 for r in rs),
            "plugin_cpu_us_per_req": None
            if rs[0].plugin_cpu_s is None
            else report.median((r.plugin_cpu_s or 0.0) / r.succeeded * 1e6 for r in rs),
            "client_cpu_share": report.median(r.client_cpu_s / r.finished_s for r in rs),
            "other_cpu_share": report.median(r.other_cpu_s / r.finished_s for r in rs),
        }
    return out


def throughput_table(medians: dict[str, dict[str, Any]], load: h2load.Load) -> str:
    header = [
        "namespace",
        "req/s (min..max)",
        "vs inproc",
        "proxy CPU µs/req",
        "plugin CPU µs/req",
        "h2load CPU",
        "other CPU",
    ]
    base = medians[BASELINE]["req_per_s"]
    rows = [
        [
            LABELS[ns],
            f"{report.fmt_num(m['req_per_s'])} ({report.fmt_num(m['req_per_s_min'])}"
            f"..{report.fmt_num(m['req_per_s_max'])})",
            report.fmt_ratio(report.ratio(m["req_per_s"], base)),
            _us(m["proxy_cpu_us_per_req"]),
            _us(m["plugin_cpu_us_per_req"]) if m["plugin_cpu_us_per_req"] else "(in proxy)",
            f"{m['client_cpu_share'] * 100:.0f}%",
            f"{m['other_cpu_share'] * 100:.0f}%",
        ]
        for ns, m in medians.items()
    ]
    return (
        f"### throughput: Execute get, h2load {load.clients} connection x {load.streams} "
        f"concurrent streams, {load.duration_s:g} s per namespace\n\n"
        + report.markdown_table(header, rows)
    )


def verdicts(medians: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for ns, target in TARGET_ADDED_P50_US.items():
        ms = {op: medians[f"{ns}/{op}"] for op in OPS}
        ok = all(m["pass"] for m in ms.values())
        added = ", ".join(f"{op} {_signed_us(m['added_p50_us'])} µs" for op, m in ms.items())
        lines.append(
            f"- {ns}: added p50 {added}; target ≤ {target:,.0f} µs: "
            f"{'PASS' if ok else '**FAIL**'} (RFC-008 claims {RFC_CLAIMS[ns]} for its Rust design)"
        )
    return lines


class PluginsSuite:
    name = "plugins"
    summary = (
        "plugin calls: added p50/p99 latency and CPU per call of sidecar and remote (mTLS) over "
        "in-process, memstore set/get; concurrent req/s"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--only", choices=["latency", "throughput", "recovery"], help="run one part"
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
            },
        )
        log(f"{repeat} round(s); logs in {logs}")
        data: dict[str, Any] = {"suite": self.name, "environment": env, "namespaces": NAMESPACES}
        markdown_parts: list[str] = []
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp_name:
            tmp = Path(tmp_name)
            certs = make_certs(tmp)

            def remote_args(port: int) -> list[str]:
                return [
                    "plugin", "serve", "memstore", "--listen", f"127.0.0.1:{port}",
                    "--tls-cert", str(certs.plugin_cert), "--tls-key", str(certs.plugin_key),
                    "--tls-client-ca", str(certs.proxy_ca),
                ]  # fmt: skip

            remote = PrismProcess("remote-plugin", remote_args, logs / "remote-plugin.log")
            runtime = tmp / "run"
            runtime.mkdir(mode=0o700)
            config_path = tmp / "prism.yaml"
            proxy = PrismProcess(
                "proxy",
                lambda port: ["serve", "--config", str(config_path)],
                logs / "proxy.log",
            )
            config_path.write_text(proxy_config(proxy.port, remote.port, certs, runtime))
            shutil.copy(config_path, logs / "prism.yaml")
            try:
                remote.start()
                proxy.start(timeout_s=60)
                side = sidecar_pid(proxy.pid)
                pids: dict[str, tuple[int, int | None]] = {
                    "inproc": (proxy.pid, None),
                    "sidecar": (proxy.pid, side),
                    "remote": (proxy.pid, remote.pid),
                }
                log(f"proxy pid {proxy.pid} on port {proxy.port}, sidecar pid {side}, "
                    f"remote plugin pid {remote.pid} on port {remote.port}")  # fmt: skip
                address = f"{proxy.host}:{proxy.port}"
                sizes = self._check(address, args.value_size)
                if do_latency:
                    plan = {
                        "address": address,
                        "targets": [
                            {"namespace": ns, "proxy_pid": p[0], "plugin_pid": p[1]}
                            for ns, p in pids.items()
                        ],
                        "rounds": repeat,
                        "calls": calls,
                        "warmup": warmup,
                        "value_size": args.value_size,
                    }
                    result = self._run_client(plan, calls, repeat)
                    medians = summarize_latency(result["batches"], repeat)
                    data["latency"] = {"plan": plan, "medians": medians, **result}
                    markdown_parts.append(latency_table(medians, args.value_size))
                    markdown_parts.append("\n".join(verdicts(medians)))
                    data["latency"]["verdicts"] = verdicts(medians)
                if do_throughput:
                    assert h2 is not None
                    runs = self._throughput(h2, proxy, pids, sizes, load, repeat, tmp, args)
                    tmedians = summarize_throughput(runs)
                    data["throughput"] = {
                        "medians": tmedians,
                        "runs": [asdict(r) for r in runs],
                    }
                    markdown_parts.append(throughput_table(tmedians, load))
                self._check(address, args.value_size)  # still answering after the load?
                for process in (proxy, remote):
                    process.check_alive()
                if sidecar_pid(proxy.pid) != side:
                    raise BenchError("the sidecar was restarted during the run: see proxy.log")
                if do_recovery:
                    kills = args.kills or (3 if args.quick else 10)
                    log(f"recovery: {kills} SIGKILLs of the sidecar under load")
                    recovery = plugin_recovery.run(address, proxy.pid, child_pids, kills)
                    data["recovery"] = recovery
                    markdown_parts.append(plugin_recovery.table(recovery))
                    proxy.check_alive()
            finally:
                proxy.stop()
                remote.stop()
        markdown = "\n\n".join(markdown_parts)
        markdown += (
            f"\n\nMedians of {repeat} round(s); {env['date_utc']}; commit {env['git_commit']}; "
            f"{env['cpus']} CPUs ({env['cpu_model']}), client, proxy and plugins on the same "
            f"machine; `{' '.join(env['command'])}`."
        )
        path = report.write_results(results_dir, f"plugins-{stamp}", data, markdown)
        print(markdown)
        log(f"results: {path}")
        return 0

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
        # Generous: 20 ms per call would already be 10x slower than anything seen.
        timeout = 60 + len(NAMESPACES) * len(OPS) * (calls * repeat + plan["warmup"]) * 0.02
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
        proxy: ServerProcess,
        pids: dict[str, tuple[int, int | None]],
        sizes: dict[str, dict[str, int]],
        load: h2load.Load,
        repeat: int,
        tmp: Path,
        args: argparse.Namespace,
    ) -> list[ThroughputRun]:
        from bench import plugin_client

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
                    h2, url, bodies[ns], load, sizes[ns]["get"], ns, round_no, pids[ns]
                )
                runs.append(run)
                proxy.check_alive()
                log(
                    f"round {round_no + 1}/{repeat} throughput {ns:8} {run.req_per_s:8,.0f} req/s  "
                    f"proxy CPU {run.proxy_cpu_s / run.succeeded * 1e6:5.0f} µs/req  "
                    f"other load {run.other_cpu_s / run.finished_s:4.0%}"
                )
        return runs


register(PluginsSuite())
