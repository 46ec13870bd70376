"""`abuse` suite: attacks on one connection, prism.grpc beside grpcio, and memory per connection.

Scenarios (each server is its own process, the same echo service as the `grpc` suite):

* ``rapid-reset``: one connection opens and at once resets 20,000 streams (HEADERS then
  RST_STREAM, CVE-2023-44487), written as fast as the server reads.
* ``ping-flood``: one connection sends 20,000 PINGs.
* ``memory``: 100,000 unary calls on one connection (h2load ``-c 1``); the server's resident
  memory before and after.

Each attack runs twice on fresh server processes: alone, for the server's CPU time (from
/proc) and the time to GOAWAY; then with a bystander process (a grpcio client on its own
connection, the health check's stand-in) making one 100-byte echo call every 10 ms, for its
latencies (and, before the attack, the same without it: the machine's noise floor). "prism, no flood
limits" is prism with its budgets and keepalive policy off: what each attacked stream costs
when nothing stops the attack early.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import attack, echo, h2load, report
from bench.errors import BenchError
from bench.procs import ServerProcess, read_rss_bytes
from bench.suites import register

PACKAGES = ("grpcio", "h2", "hpack", "hyperframe", "trio", "prism-proxy")
SERVERS: dict[str, tuple[str, list[str], bool]] = {
    # name: (module, extra args, needs grpcio stubs)
    "prism": ("bench.servers.prism_echo", [], False),
    "prism-unlimited": ("bench.servers.prism_echo", ["--no-flood-limits"], False),
    "grpcio-sync": ("bench.servers.grpcio_sync_echo", [], True),
}
ATTACKS = ("rapid-reset", "ping-flood")


@dataclass
class AttackRun:
    server: str
    scenario: str
    round: int
    units: int
    units_sent: int
    server_cpu_ms: float
    cpu_us_per_unit: float
    goaway_after_ms: float | None
    goaway: str | None
    closed_after_ms: float | None
    bystander: dict[str, float | int]
    bystander_idle: dict[str, float | int]


@dataclass
class MemoryRun:
    server: str
    round: int
    calls: int
    rss_before_mib: float
    rss_after_mib: float


def log(message: str) -> None:
    print(f"[bench abuse] {message}", file=sys.stderr, flush=True)


def _settle_cpu(server: ServerProcess) -> float:
    """The server's CPU seconds once it stopped using CPU (work it queued is done)."""
    last = server.cpu_seconds()
    for _ in range(100):
        time.sleep(0.2)
        now = server.cpu_seconds()
        if now - last < 0.002:
            return now
        last = now
    return last


def _bystander_alone(server: ServerProcess, stubs: Path) -> dict[str, Any]:
    """Bystander latencies without an attack (the machine's noise floor)."""
    bystander = attack.Bystander(server.host, server.port, stubs)
    time.sleep(2.0)
    return bystander.stop()


def _burst(scenario: str, units: int) -> list[bytes]:
    if scenario == "rapid-reset":
        return attack.rapid_reset_burst(echo.METHOD, units)
    return attack.ping_burst(units)


def run_attack(start: Any, stubs: Path, scenario: str, units: int, round_no: int) -> AttackRun:
    """Two attacks on fresh servers (``start()`` makes one): the first alone, for the server's
    CPU time; the second with the bystander calling, for its latencies."""
    chunks = _burst(scenario, units)
    server = start()
    try:
        before = _settle_cpu(server)
        result = attack.attack(server.host, server.port, chunks, units, linger_s=5.0)
        cpu = _settle_cpu(server) - before
        server.check_alive()
        echo.check_echo(stubs, server.host, server.port, 100)  # still serving
    finally:
        server.stop()
    server = start()
    try:
        idle = _bystander_alone(server, stubs)
        bystander = attack.Bystander(server.host, server.port, stubs)
        time.sleep(0.3)
        attack.attack(server.host, server.port, chunks, units, linger_s=5.0)
        during = bystander.stop()
        server.check_alive()
    finally:
        server.stop()
    goaway = None
    if result.goaway_code is not None:
        goaway = f"{result.goaway_code} {(result.goaway_debug or b'').decode(errors='replace')}"
    return AttackRun(
        server=server.name,
        scenario=scenario,
        round=round_no,
        units=units,
        units_sent=result.units_sent,
        server_cpu_ms=cpu * 1000,
        cpu_us_per_unit=cpu / max(1, result.units_sent) * 1e6,
        goaway_after_ms=None if result.goaway_after_s is None else result.goaway_after_s * 1000,
        goaway=goaway,
        closed_after_ms=None if result.closed_after_s is None else result.closed_after_s * 1000,
        bystander=during,
        bystander_idle=idle,
    )


def run_memory(h2: str, server: ServerProcess, body: Path, calls: int, round_no: int) -> MemoryRun:
    before = read_rss_bytes(server.pid) or 0
    url = f"http://{server.host}:{server.port}{echo.METHOD}"
    h2load.run(h2, url, body, h2load.Load(clients=1, streams=16, requests=calls))
    time.sleep(0.5)  # the connection's close reaches the server
    after = read_rss_bytes(server.pid) or 0
    return MemoryRun(server.name, round_no, calls, before / (1 << 20), after / (1 << 20))


def _fmt_ms(value: float | None) -> str:
    return "none" if value is None else f"{value:,.0f} ms"


def attack_table(scenario: str, runs: list[AttackRun], names: list[str]) -> str:
    unit = "stream" if scenario == "rapid-reset" else "ping"
    header = [
        "server",
        f"{unit}s sent",
        "server CPU",
        f"CPU µs per {unit} sent",
        "GOAWAY after",
        "GOAWAY (code, debug)",
        "bystander p50 / p99 / max",
        "bystander failed",
        "bystander p99, no attack",
    ]
    rows = []
    for name in names:
        mine = [r for r in runs if r.server == name and r.scenario == scenario]
        if not mine:
            continue

        def med(values: list[float]) -> float:
            return statistics.median(values)

        goaways = [r.goaway_after_ms for r in mine]
        rows.append(
            [
                name,
                f"{med([r.units_sent for r in mine]):,.0f} of {mine[0].units:,}",
                f"{med([r.server_cpu_ms for r in mine]):,.0f} ms",
                f"{med([r.cpu_us_per_unit for r in mine]):,.1f}",
                "none" if None in goaways else _fmt_ms(med([g for g in goaways if g is not None])),
                mine[0].goaway or "none",
                " / ".join(
                    f"{med([float(r.bystander[k]) for r in mine]):,.1f}"
                    for k in ("p50_ms", "p99_ms", "max_ms")
                )
                + " ms",
                f"{sum(int(r.bystander['failed']) for r in mine)}",
                f"{med([float(r.bystander_idle['p99_ms']) for r in mine]):,.1f} ms",
            ]
        )
    return f"### {scenario}\n\n" + report.markdown_table(header, rows)


def memory_table(runs: list[MemoryRun], names: list[str]) -> str:
    header = ["server", "calls on one connection", "RSS before", "RSS after", "growth"]
    rows = []
    for name in names:
        mine = [r for r in runs if r.server == name]
        if not mine:
            continue
        before = statistics.median(r.rss_before_mib for r in mine)
        after = statistics.median(r.rss_after_mib for r in mine)
        rows.append(
            [
                name,
                f"{mine[0].calls:,}",
                f"{before:,.1f} MiB",
                f"{after:,.1f} MiB",
                f"{after - before:+,.1f} MiB",
            ]
        )
    return "### memory\n\n" + report.markdown_table(header, rows)


class AbuseSuite:
    name = "abuse"
    summary = (
        "attacks on one connection (rapid reset, ping flood) with a bystander's latency, and "
        "memory after 100k calls on one connection: prism.grpc vs grpcio"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--only", choices=[*ATTACKS, "memory"], help="run one scenario (default: all)"
        )
        parser.add_argument(
            "--servers", help=f"comma-separated, from: {', '.join(SERVERS)} (default: all)"
        )
        parser.add_argument(
            "--units", type=int, help="streams reset / pings sent (default 20000, --quick 5000)"
        )
        parser.add_argument(
            "--calls", type=int, help="calls in the memory scenario (default 100000)"
        )
        parser.add_argument(
            "--baseline",
            type=Path,
            metavar="TREE",
            help="also run prism's echo server from TREE (a checkout of another commit), as "
            "server prism-baseline: before/after in one run",
        )

    def run(self, args: argparse.Namespace) -> int:
        names = [n.strip() for n in (args.servers or ",".join(SERVERS)).split(",") if n.strip()]
        roots: dict[str, Path] = {}
        if args.baseline is not None:
            tree = args.baseline.resolve()
            if not (tree / "bench" / "servers" / "prism_echo.py").is_file():
                raise BenchError(f"--baseline {tree}: no bench/servers/prism_echo.py there")
            SERVERS["prism-baseline"] = ("bench.servers.prism_echo", [], False)
            roots["prism-baseline"] = tree
            names.insert(1, "prism-baseline")
        unknown = [n for n in names if n not in SERVERS]
        if unknown:
            raise BenchError(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
        scenarios = [args.only] if args.only else [*ATTACKS, "memory"]
        units = args.units or (5000 if args.quick else 20000)
        calls = args.calls or (20000 if args.quick else 100000)
        repeat = args.repeat or (1 if args.quick else 3)
        h2 = h2load.find_h2load() if "memory" in scenarios else ""
        stamp = report.timestamp()
        results_dir: Path = args.results_dir
        logs = results_dir / "logs" / f"abuse-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        env = report.environment(PACKAGES, {"repeat": repeat, "servers": names, "units": units})
        attacks: list[AttackRun] = []
        memory: list[MemoryRun] = []
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp:
            stubs = Path(tmp) / "stubs"
            stubs.mkdir()
            echo.generate_stubs(stubs)
            body = echo.write_body(Path(tmp) / "unary.bin", 100)
            for round_no in range(repeat):
                for scenario in scenarios:
                    order = names[round_no % len(names) :] + names[: round_no % len(names)]
                    for name in order:
                        module, extra, needs_stubs = SERVERS[name]
                        argv = [*(["--stubs", str(stubs)] if needs_stubs else []), *extra]

                        def start(
                            name: str = name,
                            module: str = module,
                            argv: list[str] = argv,
                            tag: str = f"{scenario}-{round_no}",
                        ) -> ServerProcess:
                            # A fresh server per run: no attack leaves state to the next.
                            log_path = logs / f"{name}-{tag}-{time.time_ns()}.log"
                            server = ServerProcess(name, module, argv, log_path)
                            if name in roots:
                                server = ServerProcess(
                                    name, module, argv, log_path, root=roots[name]
                                )
                            server.start()
                            echo.check_echo(stubs, server.host, server.port, 100)
                            return server

                        if scenario == "memory":
                            server = start()
                            try:
                                run = run_memory(h2, server, body, calls, round_no)
                            finally:
                                server.stop()
                            memory.append(run)
                            log(
                                f"round {round_no + 1}/{repeat} memory {name}: RSS "
                                f"{run.rss_before_mib:.1f} -> {run.rss_after_mib:.1f} MiB"
                            )
                        else:
                            result = run_attack(start, stubs, scenario, units, round_no)
                            attacks.append(result)
                            log(
                                f"round {round_no + 1}/{repeat} {scenario} {name}: "
                                f"{result.cpu_us_per_unit:.1f} µs/unit, GOAWAY "
                                f"{_fmt_ms(result.goaway_after_ms)}, bystander p99 "
                                f"{result.bystander['p99_ms']:.1f} ms"
                            )
        parts = [attack_table(s, attacks, names) for s in scenarios if s in ATTACKS]
        if "memory" in scenarios:
            parts.append(memory_table(memory, names))
        markdown = "\n\n".join(parts) + (
            f"\n\nMedians of {repeat} round(s); {env['date_utc']}; {env['cpus']} CPUs "
            f"({env['cpu_model']}), load average at start {env['loadavg_at_start'][0]:.1f}; "
            f"attacker, bystander and servers on the same machine; "
            f"`{' '.join(env['command'])}`."
        )
        path = report.write_results(
            results_dir,
            f"abuse-{stamp}",
            {
                "suite": self.name,
                "environment": env,
                "attacks": [asdict(r) for r in attacks],
                "memory": [asdict(r) for r in memory],
            },
            markdown + (f"\n\nprism-baseline: run from {args.baseline}." if roots else ""),
        )
        print(markdown)
        log(f"results: {path}")
        return 0


register(AbuseSuite())
