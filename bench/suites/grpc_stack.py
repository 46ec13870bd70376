"""`grpc` suite: prism.grpc's server against grpclib and grpcio on the same echo service.

Every server runs as its own process; h2load drives it with a fixed gRPC request body. For
each run we record h2load's throughput and the server's CPU time (utime + stime from
/proc/<pid>/stat), so "CPU µs per request" and "requests per server core-second" stay
meaningful on a small, shared machine where the load generator competes for the same cores.
Rounds interleave the servers (rotating their order), and the report takes medians.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import echo, h2load, report, streams
from bench.errors import BenchError
from bench.procs import ROOT, ServerProcess, read_system_busy_seconds
from bench.suites import register

MiB = 1 << 20
BASELINES = ("grpclib", "grpcio-sync")
#: Versions recorded in the results file.
PACKAGES = ("grpcio", "grpcio-tools", "grpclib", "uvloop", "protobuf", "h2", "trio", "prism-proxy")


@dataclass(frozen=True)
class ServerKind:
    module: str
    description: str
    args: Callable[[Path], list[str]]
    #: None when it can run here, else why not.
    unavailable: Callable[[], str | None]
    default: bool = True
    #: The scenarios it takes part in (None: every scenario but the compressed one).
    scenarios: frozenset[str] | None = None
    #: Where `prism` is imported from (None: this tree).
    root: Path | None = None


#: Scenarios a server kind takes part in unless it says otherwise.
PLAIN = frozenset({"unary", "large", "stream-server", "stream-client"})


def _kind(name: str) -> ServerKind:
    """A server's kind; ``prism-baseline`` (``--baseline``: another tree's prism echo) is
    prism's."""
    return SERVERS[name if name in SERVERS else "prism"]


def serves(kind: ServerKind, scenario: str) -> bool:
    return scenario in (kind.scenarios if kind.scenarios is not None else PLAIN)


def _missing_modules(*names: str) -> str | None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    return f"{', '.join(missing)} not importable" if missing else None


def _prism_unavailable() -> str | None:
    try:
        pg = importlib.import_module("prism.grpc")
    except ImportError as exc:
        return f"prism.grpc does not import ({exc})"
    missing = [
        n for n in ("Server", "ServerOptions", "Service", "unary_unary") if not hasattr(pg, n)
    ]
    return f"prism.grpc has no {', '.join(missing)} yet" if missing else None


SERVERS: dict[str, ServerKind] = {
    "prism": ServerKind(
        "bench.servers.prism_echo",
        "prism.grpc on Trio, raw bytes handler",
        lambda stubs: [],
        _prism_unavailable,
    ),
    "prism-interceptor": ServerKind(
        "bench.servers.prism_echo",
        "prism.grpc with one no-op ServerInterceptor",
        lambda stubs: ["--interceptor"],
        _prism_unavailable,
        default=False,
    ),
    "grpclib": ServerKind(
        "bench.servers.grpclib_echo",
        "grpclib on asyncio",
        lambda stubs: ["--stubs", str(stubs)],
        lambda: _missing_modules("grpclib"),
    ),
    "grpclib-uvloop": ServerKind(
        "bench.servers.grpclib_echo",
        "grpclib on uvloop",
        lambda stubs: ["--stubs", str(stubs), "--uvloop"],
        lambda: _missing_modules("grpclib", "uvloop"),
    ),
    "grpcio-sync": ServerKind(
        "bench.servers.grpcio_sync_echo",
        "grpcio, grpc.server + ThreadPoolExecutor(16)",
        lambda stubs: ["--stubs", str(stubs)],
        lambda: _missing_modules("grpc"),
    ),
    "grpcio-aio": ServerKind(
        "bench.servers.grpcio_aio_echo",
        "grpcio, grpc.aio server",
        lambda stubs: ["--stubs", str(stubs)],
        lambda: _missing_modules("grpc"),
        default=False,
    ),
    "prism-gzip": ServerKind(
        "bench.servers.prism_echo",
        "prism.grpc, ServerOptions(compression='gzip')",
        lambda stubs: ["--compression", "gzip"],
        _prism_unavailable,
        scenarios=frozenset({"gzip"}),
    ),
    "grpcio-sync-gzip": ServerKind(
        "bench.servers.grpcio_sync_echo",
        "grpcio sync, grpc.server(compression=Gzip)",
        lambda stubs: ["--stubs", str(stubs), "--compression", "gzip"],
        lambda: _missing_modules("grpc"),
        scenarios=frozenset({"gzip"}),
    ),
}
#: The names ratios are taken against in the compressed scenario.
GZIP_BASELINES = {"grpcio-sync-gzip": "grpcio-sync"}


def add_baseline_tree(root: Path) -> str:
    """A `prism-before` server: this tree's echo server with `prism` imported from another
    checkout, for before/after figures from one run. The runner copies this tree's `bench/`
    over DIR's (`python -m` imports from its working directory first, and the server must be
    this one), so DIR should be a scratch export, e.g. `git archive main | tar -x -C DIR`."""
    if not (root / "prism" / "grpc").is_dir():
        raise BenchError(f"--prism-before {root}: no prism/grpc there")
    shutil.rmtree(root / "bench", ignore_errors=True)
    shutil.copytree(ROOT / "bench", root / "bench", ignore=shutil.ignore_patterns("results"))
    SERVERS["prism-before"] = ServerKind(
        "bench.servers.prism_echo",
        f"prism.grpc from {root}",
        lambda stubs: [],
        _prism_unavailable,
        root=root,
    )
    return "prism-before"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    payload_size: int
    load: h2load.Load
    warmup: h2load.Load
    #: "req/s" scenarios rank by requests per second, "MiB/s" ones by echoed payload bytes,
    #: "msg/s" (streams) by messages per second.
    unit: str
    #: Streams: messages per stream (one grpcio client, one stream per run).
    messages: int = 0


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    large_n = args.large_requests or (8 if args.quick else 32)
    unary_load = h2load.Load(clients=4, streams=16, duration_s=duration)
    large_load = h2load.Load(clients=2, streams=1, requests=large_n, max_frame_size=1 * MiB)
    all_scenarios = [
        Scenario(
            "unary",
            f"100-byte echo, {unary_load.clients} connections x {unary_load.streams} streams, "
            f"{duration:g}s",
            100,
            unary_load,
            h2load.Load(clients=4, streams=16, requests=1000 if args.quick else 10000),
            "req/s",
        ),
        Scenario(
            "large",
            f"16 MiB echo, {large_load.clients} connections x {large_load.streams} stream, "
            f"{large_n} requests, h2load max frame 1 MiB",
            16 * MiB,
            large_load,
            h2load.Load(clients=2, streams=1, requests=2 if args.quick else 4, max_frame_size=MiB),
            "MiB/s",
        ),
    ]
    gzip_load = h2load.Load(clients=4, streams=16, duration_s=duration)
    all_scenarios.append(
        Scenario(
            "gzip",
            f"{echo.GZIP_PAYLOAD}-byte compressible echo, request and response gzip, "
            f"{gzip_load.clients} connections x {gzip_load.streams} streams, {duration:g}s",
            echo.GZIP_PAYLOAD,
            gzip_load,
            h2load.Load(clients=4, streams=16, requests=1000 if args.quick else 10000),
            "req/s",
        )
    )
    messages = args.stream_messages or (20_000 if args.quick else 200_000)
    for name, direction in (
        ("stream-server", "server to client"),
        ("stream-client", "client to server"),
    ):
        all_scenarios.append(
            Scenario(
                name,
                f"one stream of {messages:,} {echo.STREAM_MESSAGE}-byte messages, {direction}, "
                "grpcio (sync) client",
                echo.STREAM_MESSAGE,
                unary_load,
                unary_load,
                "msg/s",
                messages=messages,
            )
        )
    return [s for s in all_scenarios if args.only in (None, s.name)]


@dataclass
class Run:
    server: str
    scenario: str
    round: int
    req_per_s: float
    mib_per_s: float
    succeeded: int
    finished_s: float
    server_cpu_s: float
    client_cpu_s: float
    #: CPU seconds everything else on the machine used during the run (noise).
    other_cpu_s: float
    cpu_us_per_req: float
    req_per_core_s: float
    mib_per_core_s: float
    peak_rss_bytes: int | None
    h2load_command: list[str] = field(default_factory=list)


def load(h2: str, server: ServerProcess, scenario: Scenario, body: Path) -> h2load.H2loadReport:
    url = f"http://{server.host}:{server.port}{echo.METHOD}"
    if scenario.name == "gzip":
        # A compressed response is about as long as the compressed request; 6 bytes is
        # what an empty (error) response would lack for sure.
        return h2load.run(
            h2, url, body, scenario.load, headers=echo.GZIP_HEADERS, min_response_bytes=6
        )
    return h2load.run(h2, url, body, scenario.load)


def measure_stream(server: ServerProcess, scenario: Scenario, round_no: int) -> Run:
    mode = scenario.name.removeprefix("stream-")
    busy_before = read_system_busy_seconds()
    cpu_before = server.cpu_seconds()
    result = streams.run(server.host, server.port, mode, scenario.messages, scenario.payload_size)
    cpu_s = server.cpu_seconds() - cpu_before
    busy_s = read_system_busy_seconds() - busy_before
    server.check_alive()
    if cpu_s <= 0:
        raise BenchError(f"{server.name}: no CPU time measured for {scenario.name}")
    mib = result.payload_bytes / MiB
    return Run(
        server=server.name,
        scenario=scenario.name,
        round=round_no,
        req_per_s=result.messages / result.elapsed_s,
        mib_per_s=mib / result.elapsed_s,
        succeeded=result.messages,
        finished_s=result.elapsed_s,
        server_cpu_s=cpu_s,
        client_cpu_s=result.client_cpu_s,
        other_cpu_s=max(0.0, busy_s - cpu_s - result.client_cpu_s),
        cpu_us_per_req=cpu_s / result.messages * 1e6,
        req_per_core_s=result.messages / cpu_s,
        mib_per_core_s=mib / cpu_s,
        peak_rss_bytes=server.peak_rss_bytes(),
        h2load_command=[f"bench.stream_client {mode} {scenario.messages}"],
    )


def measure(h2: str, server: ServerProcess, scenario: Scenario, body: Path, round_no: int) -> Run:
    if scenario.unit == "msg/s":
        return measure_stream(server, scenario, round_no)
    busy_before = read_system_busy_seconds()
    cpu_before = server.cpu_seconds()
    result = load(h2, server, scenario, body)
    cpu_s = server.cpu_seconds() - cpu_before
    busy_s = read_system_busy_seconds() - busy_before
    server.check_alive()
    if cpu_s <= 0:
        raise BenchError(f"{server.name}: no CPU time measured for {scenario.name}")
    payload_mib = result.succeeded * scenario.payload_size / MiB
    return Run(
        server=server.name,
        scenario=scenario.name,
        round=round_no,
        req_per_s=result.req_per_s,
        mib_per_s=payload_mib / result.finished_s,
        succeeded=result.succeeded,
        finished_s=result.finished_s,
        server_cpu_s=cpu_s,
        client_cpu_s=result.client_cpu_s,
        other_cpu_s=max(0.0, busy_s - cpu_s - result.client_cpu_s),
        cpu_us_per_req=cpu_s / result.succeeded * 1e6,
        req_per_core_s=result.succeeded / cpu_s,
        mib_per_core_s=payload_mib / cpu_s,
        peak_rss_bytes=server.peak_rss_bytes(),
        h2load_command=result.command,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    def med(attr: str) -> float:
        return report.median(getattr(r, attr) for r in runs)

    primary = [r.req_per_s for r in runs]
    mib = [r.mib_per_s for r in runs]
    rss = [r.peak_rss_bytes for r in runs if r.peak_rss_bytes is not None]
    return {
        "runs": len(runs),
        "req_per_s": med("req_per_s"),
        "req_per_s_min": min(primary),
        "req_per_s_max": max(primary),
        "mib_per_s": med("mib_per_s"),
        "mib_per_s_min": min(mib),
        "mib_per_s_max": max(mib),
        "cpu_us_per_req": med("cpu_us_per_req"),
        "req_per_core_s": med("req_per_core_s"),
        "mib_per_core_s": med("mib_per_core_s"),
        "client_cpu_share": report.median(r.client_cpu_s / r.finished_s for r in runs),
        "other_cpu_share": report.median(r.other_cpu_s / r.finished_s for r in runs),
        "peak_rss_bytes": max(rss) if rss else None,
    }


def table(scenario: Scenario, medians: dict[str, dict[str, Any]]) -> str:
    large = scenario.unit == "MiB/s"
    rate, per_core = ("mib_per_s", "mib_per_core_s") if large else ("req_per_s", "req_per_core_s")
    header = [
        "server",
        f"{scenario.unit} (min..max)",
        "server CPU ms/req" if large else f"server CPU µs/{scenario.unit.removesuffix('/s')}",
        f"{scenario.unit} per server core",
        "client CPU",
        "other CPU",
    ]
    if large:
        header.append("server peak RSS")
    baselines = [b for b in (*BASELINES, *GZIP_BASELINES, "prism-before") if b in medians]
    header += [f"vs {b}: {scenario.unit}, per core" for b in baselines]
    rows = []
    for name, m in medians.items():
        digits = 1 if large else 0
        cpu = m["cpu_us_per_req"] / 1000 if large else m["cpu_us_per_req"]
        row = [
            name,
            f"{report.fmt_num(m[rate], digits)} ({report.fmt_num(m[rate + '_min'], digits)}"
            f"..{report.fmt_num(m[rate + '_max'], digits)})",
            report.fmt_num(cpu, 1 if large else 0),
            report.fmt_num(m[per_core], digits),
            f"{m['client_cpu_share'] * 100:.0f}%",
            f"{m['other_cpu_share'] * 100:.0f}%",
        ]
        if large:
            rss = m["peak_rss_bytes"]
            row.append("-" if rss is None else f"{rss / MiB:,.0f} MiB")
        for b in baselines:
            row.append(
                f"{report.fmt_ratio(report.ratio(m[rate], medians[b][rate]))}, "
                f"{report.fmt_ratio(report.ratio(m[per_core], medians[b][per_core]))}"
            )
        rows.append(row)
    return f"### {scenario.name}: {scenario.description}\n\n" + report.markdown_table(header, rows)


def check(stubs: Path, server: ServerProcess, chosen: list[Scenario]) -> None:
    """A real call per scenario, checked (status OK, the payload back, every message)."""
    for s in chosen:
        if s.unit == "msg/s":
            streams.run(server.host, server.port, s.name.removeprefix("stream-"), 100, 1024)
        else:
            echo.check_echo(
                stubs, server.host, server.port, s.payload_size, compressed=s.name == "gzip"
            )


def warm_up(h2: str, server: ServerProcess, scenario: Scenario, body: Path) -> None:
    if scenario.unit == "msg/s":
        mode = scenario.name.removeprefix("stream-")
        streams.run(server.host, server.port, mode, scenario.messages // 10, 1024)
    else:
        load(h2, server, replace(scenario, load=scenario.warmup), body)


def choose_servers(args: argparse.Namespace) -> list[str]:
    if args.servers:
        names = [n.strip() for n in args.servers.split(",") if n.strip()]
        unknown = [n for n in names if n not in SERVERS]
        if unknown:
            raise BenchError(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
        for name in names:
            why = SERVERS[name].unavailable()
            if why:
                raise BenchError(f"server {name!r} cannot run here: {why}")
        return names
    names = []
    for name, kind in SERVERS.items():
        if not kind.default:
            continue
        why = kind.unavailable()
        if why:
            log(f"SKIPPING {name}: {why} (name it in --servers to make this an error)")
        else:
            names.append(name)
    if not names:
        raise BenchError("no server can run here")
    return names


def log(message: str) -> None:
    print(f"[bench grpc] {message}", file=sys.stderr, flush=True)


class GrpcStackSuite:
    name = "grpc"
    summary = (
        "gRPC stack: prism.grpc vs grpclib and grpcio echo servers under h2load "
        "(unary 100-byte and 16 MiB messages)"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--only",
            choices=["unary", "large", "gzip", "stream-server", "stream-client"],
            help="run one scenario",
        )
        parser.add_argument(
            "--prism-before",
            type=Path,
            metavar="DIR",
            help="also run prism's echo server with `prism` imported from DIR (an export of "
            "an earlier commit; its bench/ is replaced): before/after figures from one run",
        )
        parser.add_argument(
            "--stream-messages",
            type=int,
            help="messages per stream in the streaming scenarios (default 200000, --quick 20000)",
        )
        parser.add_argument(
            "--servers",
            help=f"comma-separated, from: {', '.join(SERVERS)} "
            f"(default: {', '.join(n for n, k in SERVERS.items() if k.default)})",
        )
        parser.add_argument(
            "--duration", type=float, help="seconds per unary run (default 10, --quick 2)"
        )
        parser.add_argument(
            "--baseline",
            type=Path,
            metavar="TREE",
            help="also run prism's echo server from TREE (a checkout of another commit, e.g. "
            "`git archive main | tar -x -C TREE`), as server prism-baseline: before/after in "
            "one run",
        )
        parser.add_argument(
            "--large-requests",
            type=int,
            help="16 MiB requests per large run (default 32, --quick 8)",
        )

    def run(self, args: argparse.Namespace) -> int:
        h2 = h2load.find_h2load()
        missing = _missing_modules("grpc", "grpc_tools")
        if missing:
            raise BenchError(
                f"{missing}: the runner needs grpcio and grpcio-tools (use `nox -s bench`)"
            )
        if args.prism_before is not None:
            add_baseline_tree(args.prism_before.resolve())
        names = choose_servers(args)
        if args.prism_before is not None and "prism-before" not in names:
            names.append("prism-before")
        if args.baseline is not None:
            tree = args.baseline.resolve()
            if not (tree / "bench" / "servers" / "prism_echo.py").is_file():
                raise BenchError(f"--baseline {tree}: no bench/servers/prism_echo.py there")
            names.insert(names.index("prism") + 1 if "prism" in names else 0, "prism-baseline")
        chosen = scenarios(args)
        # Only the servers some chosen scenario needs.
        names = [n for n in names if any(serves(_kind(n), s.name) for s in chosen)]
        repeat = args.repeat or (1 if args.quick else 3)
        stamp = report.timestamp()
        results_dir: Path = args.results_dir
        logs = results_dir / "logs" / f"grpc-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        env = report.environment(
            PACKAGES,
            {"h2load": h2load.h2load_version(h2), "repeat": repeat, "servers": names},
        )
        log(f"servers: {', '.join(names)}; scenarios: {', '.join(s.name for s in chosen)}; "
            f"{repeat} round(s); server logs in {logs}")  # fmt: skip
        runs: list[Run] = []
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp:
            stubs = Path(tmp) / "stubs"
            stubs.mkdir()
            echo.generate_stubs(stubs)
            bodies = {
                s.name: (echo.write_gzip_body if s.name == "gzip" else echo.write_body)(
                    Path(tmp) / f"{s.name}.bin", s.payload_size
                )
                for s in chosen
            }
            servers = [
                ServerProcess(
                    n,
                    SERVERS[n].module,
                    SERVERS[n].args(stubs),
                    logs / f"{n}.log",
                    root=SERVERS[n].root,
                )
                if n != "prism-baseline"
                else ServerProcess(
                    n, SERVERS["prism"].module, [], logs / f"{n}.log", root=args.baseline.resolve()
                )
                for n in names
            ]
            try:
                for server in servers:
                    server.start()
                    check(stubs, server, [s for s in chosen if serves(_kind(server.name), s.name)])
                    log(f"{server.name} up on port {server.port} (pid {server.pid}), echo checked")
                for round_no in range(repeat):
                    order = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
                    for s in chosen:
                        for server in order:
                            if not serves(_kind(server.name), s.name):
                                continue
                            if round_no == 0:
                                warm_up(h2, server, s, bodies[s.name])
                            run = measure(h2, server, s, bodies[s.name], round_no)
                            runs.append(run)
                            log(
                                f"round {round_no + 1}/{repeat} {s.name:13} {server.name:16} "
                                f"{run.req_per_s:9,.1f} {s.unit} {run.mib_per_s:8,.1f} MiB/s "
                                f"{run.cpu_us_per_req:10,.1f} CPU µs/{s.unit[:-2]}, "
                                f"other load {run.other_cpu_s / run.finished_s:4.0%}"
                            )
                for server in servers:  # still answering with OK after the load?
                    check(stubs, server, [s for s in chosen if serves(_kind(server.name), s.name)])
            finally:
                for server in servers:
                    server.stop()
        medians = {
            s.name: {
                n: summarize([r for r in runs if r.scenario == s.name and r.server == n])
                for n in names
                if serves(_kind(n), s.name)
            }
            for s in chosen
        }
        markdown = "\n\n".join(table(s, medians[s.name]) for s in chosen)
        if args.baseline is not None:
            markdown += f"\n\nprism-baseline: prism's echo server run from {args.baseline}."
        markdown += (
            f"\n\nMedians of {repeat} round(s); {env['date_utc']}; {env['cpus']} CPUs "
            f"({env['cpu_model']}), load generator and servers on the same machine; "
            f"`{' '.join(env['command'])}`."
        )
        path = report.write_results(
            results_dir,
            f"grpc-{stamp}",
            {
                "suite": self.name,
                "environment": env,
                "scenarios": [asdict(s) for s in chosen],
                "servers": {
                    n: SERVERS[n].description if n in SERVERS else f"prism from {args.baseline}"
                    for n in names
                },
                "medians": medians,
                "runs": [asdict(r) for r in runs],
            },
            markdown,
        )
        print(markdown)
        log(f"results: {path}")
        return 0


register(GrpcStackSuite())
