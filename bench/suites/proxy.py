"""`proxy` suite: what a whole proxy call costs, stage by stage, against bare echo servers.

h2load (`-c 4 -m 16`, a fixed request body) drives, in one run and in rotating order:

- **grpclib**: a bare grpclib echo server on asyncio (100-byte echo), the yardstick of the
  target "≥ 1.5x grpclib's req/s per core";
- **prism-echo**: prism.grpc's bare echo server (raw bytes handler), the yardstick of the
  target "the in-process plugin path within 1.5x of prism's bare echo CPU per request";
- one proxy per **case**: `Execute` `get` of a seeded key (100-byte value) on an in-process
  memstore namespace, each case a proxy of its own with the config the case gives
  (:data:`CASES`). "route" is the front door → route → plugin path with no stage at all
  (`bench.servers.prism_proxy --no-call-stages`); the others are `prism serve` processes.

Per run: h2load's req/s and the server's CPU time (utime + stime from /proc/<pid>/stat), so
"CPU µs per request" and "requests per server core-second" stay meaningful on a shared
machine where h2load competes for the same cores. Medians of the rounds; a same-run
calibration (`bench.calibration --quick`) before and after. `--baseline DIR` runs every case
a second time with `prism` imported from DIR (an export of an earlier commit), in the same
rounds: before/after from one run. Then `bench.proxy_path`, the plugin path alone without
the gRPC stack (µs per call, each tree alternately). `--profile CASE` samples that case's
proxy with py-spy during one extra run and prints where its time goes.

A case is one :class:`Case` in :data:`CASES`: its name, what it turns on, and a function of
the run's scratch directory returning the config sections to add (top level and on the
namespace) and the request headers h2load sends (a bearer token, say). The stage cases are
cumulative, in the request path's order (:func:`add_stage`: each adds its layer to those of
the cases before it): metrics (tracing off), +auth, +authz, +ratelimit, +concurrency, +audit,
+tracing, the last with every stage on (``all_stages``: the "≥ 1.5x grpclib" verdict is read
on it). Adding a stage's case is one entry (see docs/benchmarks.md, "proxy").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import echo, h2load, report
from bench.errors import BenchError
from bench.procs import ROOT, ServerProcess, read_system_busy_seconds
from bench.suites import register

PACKAGES = ("grpclib", "grpcio", "betterproto2", "h2", "trio", "prism-proxy")
NAMESPACE = "memstore"
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
#: The tree label of `--baseline DIR`'s proxies.
BASELINE = "baseline"
#: Targets (ARCHITECTURE.md §7): every stage on ≥ this x grpclib's req/s per core; the
#: in-process path alone (the "route" case) within this x prism's bare echo CPU per request.
ALL_STAGES_VS_GRPCLIB = 1.5
ROUTE_VS_PRISM_ECHO = 1.5


@dataclass(frozen=True)
class CaseSetup:
    """What a case adds to the proxy's config, and what h2load sends with every request."""

    #: Top-level config sections (merged over the suite's: listen, namespaces, admin off).
    config: dict[str, Any] = field(default_factory=dict)
    #: Fields of the memstore namespace (merged over `name`, `plugin`, `access`).
    namespace: dict[str, Any] = field(default_factory=dict)
    #: Request headers ("name: value"), e.g. "authorization: Bearer ...".
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    #: The case's config, given the run's scratch directory (for key files, JWKS, ...).
    setup: Callable[[Path], CaseSetup] = lambda tmp: CaseSetup()
    #: False: the front door without the pipeline's call-level stages (bench.servers.prism_proxy
    #: --no-call-stages): nothing counted. True: `prism serve` as it is.
    call_stages: bool = True
    #: Every stage on: the case the ≥ 1.5x grpclib target is read on.
    all_stages: bool = False
    #: Why a tree (its root) cannot run this case (its stage is not there yet), else None.
    unsupported: Callable[[Path], str | None] = lambda root: None


CASES: dict[str, Case] = {}


def add_case(case: Case) -> Case:
    if case.name in CASES:
        raise ValueError(f"proxy case {case.name!r} registered twice")
    CASES[case.name] = case
    return case


add_case(
    Case(
        "route",
        "front door → route → in-process plugin, no stage (no call-level stages: nothing counted)",
        call_stages=False,
    )
)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in (nested mappings merged, anything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


#: Each stage's case adds its layer to those of the cases before it (a layer: the run's
#: scratch directory and the setup so far → the setup with the stage on).
Layer = Callable[[Path, CaseSetup], CaseSetup]
_LAYERS: list[Layer] = []


def add_stage(
    name: str,
    description: str,
    layer: Layer,
    *,
    unsupported: Callable[[Path], str | None] = lambda root: None,
    all_stages: bool = False,
) -> Case:
    """A case with every earlier stage case's layers and ``layer`` on top of them."""
    layers = (*_LAYERS, layer)
    _LAYERS.append(layer)
    earlier = [c.unsupported for c in CASES.values() if c.call_stages]

    def setup(tmp: Path) -> CaseSetup:
        result = CaseSetup()
        for each in layers:
            result = each(tmp, result)
        return result

    def why_not(root: Path) -> str | None:
        for check in (*earlier, unsupported):
            why = check(root)
            if why is not None:
                return why
        return None

    return add_case(Case(name, description, setup, all_stages=all_stages, unsupported=why_not))


def _layer(config: dict[str, Any] | None = None, namespace: dict[str, Any] | None = None) -> Layer:
    def layer(tmp: Path, setup: CaseSetup) -> CaseSetup:
        return CaseSetup(
            _merge(setup.config, config or {}),
            _merge(setup.namespace, namespace or {}),
            setup.headers,
        )

    return layer


def _needs(module: str, stage: str) -> Callable[[Path], str | None]:
    """A case that needs `prism/proxy/<module>.py` in the tree (and PyJWT here, for auth)."""

    def unsupported(root: Path) -> str | None:
        if not (root / "prism" / "proxy" / f"{module}.py").is_file():
            return f"no {stage} in {root} (prism/proxy/{module}.py)"
        if module == "authn" and importlib.util.find_spec("jwt") is None:
            return "PyJWT is not installed here (it makes the case's token)"
        return None

    return unsupported


add_stage(
    "metrics",
    "+ the call-level stages with metrics (requests, latency, in flight by "
    "namespace/operation/status), tracing off (its case is the last)",
    _layer({"tracing": {"enabled": False}}),
    unsupported=_needs("tracing", "tracing stage (tracing.enabled)"),
)


#: The bearer token's subject; the authz case's rule names it.
SUBJECT = "bench-client"


def _auth_layer(tmp: Path, setup: CaseSetup) -> CaseSetup:
    """Bearer JWT (ES256) verified with a PEM public key; every request carries one token."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    # A file per case: every case's setup is made before any proxy starts.
    fd, name = tempfile.mkstemp(prefix="jwt-public-", suffix=".pem", dir=tmp)
    with os.fdopen(fd, "wb") as public:
        public.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    token = jwt.encode(
        {"iss": "bench", "aud": "prism", "sub": SUBJECT, "exp": 4_000_000_000},
        key,
        algorithm="ES256",
    )
    auth = {"jwt": {"issuer": "bench", "audience": "prism", "keys": [name]}}
    return CaseSetup(
        _merge(setup.config, {"auth": auth}),
        setup.namespace,
        (*setup.headers, f"authorization: Bearer {token}"),
    )


add_stage(
    "auth",
    "+ authentication: a bearer JWT (ES256, PEM key) on every call",
    _auth_layer,
    unsupported=_needs("authn", "authentication stage"),
)
add_stage(
    "authz",
    f"+ authorization: no anonymous callers, one access rule (subject {SUBJECT!r}, "
    "operations get and set)",
    _layer(
        namespace={
            "access": {
                "anonymous": False,
                "rules": [{"subject": SUBJECT, "operations": ["get", "set"]}],
            }
        }
    ),
    unsupported=_needs("authz", "authorization stage"),
)
add_stage(
    "ratelimit",
    "+ rate limits: the namespace's bucket and one per caller, 1M calls/s (never refused)",
    _layer(
        namespace={
            "traffic": {
                "rate_limit": {"rate": 1_000_000, "burst": 1_000_000},
                "caller_rate_limit": {"rate": 1_000_000, "burst": 1_000_000},
            }
        }
    ),
    unsupported=_needs("ratelimit", "rate limit stage"),
)
add_stage(
    "concurrency",
    "+ concurrency limit: 1,000 calls in flight, a queue of 100 (h2load keeps 64 in flight)",
    _layer(namespace={"traffic": {"concurrency": {"max_in_flight": 1000, "max_queue": 100}}}),
    unsupported=_needs("limits", "concurrency limit stage"),
)


def _audit_layer(tmp: Path, setup: CaseSetup) -> CaseSetup:
    fd, name = tempfile.mkstemp(prefix="audit-", suffix=".log", dir=tmp)
    os.close(fd)
    return _layer({"audit": {"enabled": True, "file": name}})(tmp, setup)


add_stage(
    "audit",
    "+ audit: one JSON record per call, to a file",
    _audit_layer,
    unsupported=_needs("audit", "audit log"),
)
add_stage(
    "tracing",
    "+ tracing: W3C trace context (a new trace per call, passed to the plugin): every stage on",
    _layer({"tracing": {"enabled": True}}),
    all_stages=True,
)


def proxy_config(port: int, setup: CaseSetup, runtime_dir: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "name": NAMESPACE,
        "plugin": {"name": "memstore", "mode": "in_process"},
        "access": {"anonymous": True},
        **setup.namespace,
    }
    return {
        "listen": f"127.0.0.1:{port}",
        "shutdown_grace": 2,
        "runtime_dir": str(runtime_dir),
        # The admin port's default is a fixed port another proxy on this machine may hold.
        "admin": {"enabled": False},
        "namespaces": [namespace],
        **setup.config,
    }


class ProxyProcess(ServerProcess):
    """One case's proxy: `prism serve --config FILE`, or bench.servers.prism_proxy for a case
    without call stages; `root`: `prism` from that tree."""

    def __init__(
        self, name: str, case: Case, setup: CaseSetup, tmp: Path, logs: Path, root: Path | None
    ) -> None:
        slug = name.replace("/", "-")
        super().__init__(name, "prism.cli.main", [], logs / f"{slug}.log", root)
        runtime = tmp / f"{slug}-run"
        runtime.mkdir(mode=0o700)
        config_path = tmp / f"{slug}.json"
        config_path.write_text(json.dumps(proxy_config(self.port, setup, runtime), indent=2))
        shutil.copy(config_path, logs / config_path.name)
        self.case = case
        self.headers = setup.headers
        if case.call_stages:
            self.argv = [sys.executable, "-m", "prism.cli.main", "serve", "--config"]
            self.argv.append(str(config_path))
        else:
            self.argv = [
                sys.executable, "-m", "bench.servers.prism_proxy", str(self.port),
                "--config", str(config_path), "--no-call-stages",
            ]  # fmt: skip


@dataclass
class Target:
    """A server under load: a bare echo, or a case's proxy."""

    name: str
    process: ServerProcess
    url: str
    body: Path
    #: Bytes every OK response carries at least (gRPC frame included).
    min_response: int
    headers: tuple[str, ...] = ()
    case: str = ""
    tree: str = ""


@dataclass
class Run:
    target: str
    round: int
    req_per_s: float
    succeeded: int
    finished_s: float
    server_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float
    cpu_us_per_req: float
    req_per_core_s: float
    h2load_command: list[str] = field(default_factory=list)


def measure(h2: str, target: Target, load: h2load.Load, round_no: int) -> Run:
    busy0 = read_system_busy_seconds()
    cpu0 = target.process.cpu_seconds()
    result = h2load.run(
        h2, target.url, target.body, load,
        headers=target.headers, min_response_bytes=target.min_response,
    )  # fmt: skip
    cpu = target.process.cpu_seconds() - cpu0
    busy = read_system_busy_seconds() - busy0
    target.process.check_alive()
    if cpu <= 0:
        raise BenchError(f"{target.name}: no CPU time measured")
    return Run(
        target=target.name,
        round=round_no,
        req_per_s=result.req_per_s,
        succeeded=result.succeeded,
        finished_s=result.finished_s,
        server_cpu_s=cpu,
        client_cpu_s=result.client_cpu_s,
        other_cpu_s=max(0.0, busy - cpu - result.client_cpu_s),
        cpu_us_per_req=cpu / result.succeeded * 1e6,
        req_per_core_s=result.succeeded / cpu,
        h2load_command=result.command,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    rates = [r.req_per_s for r in runs]
    return {
        "runs": len(runs),
        "req_per_s": report.median(rates),
        "req_per_s_min": min(rates),
        "req_per_s_max": max(rates),
        "cpu_us_per_req": report.median(r.cpu_us_per_req for r in runs),
        "req_per_core_s": report.median(r.req_per_core_s for r in runs),
        "other_cpu_share": report.median(r.other_cpu_s / r.finished_s for r in runs),
    }


def _check_proxy(target: Target, value_size: int) -> int:
    """A real set + get through the proxy (grpcio): OK and the value back. The get response's
    size."""
    import grpc

    from bench import plugin_client

    metadata = tuple(tuple(h.split(": ", 1)) for h in target.headers)
    with grpc.insecure_channel(f"{target.process.host}:{target.process.port}") as channel:
        method = channel.unary_unary(EXECUTE)

        def call(request: bytes) -> bytes:
            response: bytes = method(request, metadata=metadata or None)
            return response

        sizes = plugin_client.check_namespace(call, NAMESPACE, value_size)
    return sizes["get"]


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def plugin_path(root: Path | None, quick: bool) -> dict[str, Any]:
    """bench.proxy_path (the plugin path without the gRPC stack) in a process of its own, with
    `prism` (and memstore) from `root`'s tree, else this one."""
    first = [str(root), *map(str, sorted(root.glob("plugins/*/src")))] if root else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, str(ROOT), env.get("PYTHONPATH")]))
    calls = ["--calls", "1000", "--rounds", "3"] if quick else []
    proc = subprocess.run(
        [sys.executable, "-m", "bench.proxy_path", *calls],
        stdout=subprocess.PIPE, text=True, cwd=root or ROOT, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"bench.proxy_path failed (exit status {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def stage_path(root: Path | None, names: list[str], quick: bool) -> dict[str, Any] | None:
    """bench.stage_path (the cases' stages and plugin without the gRPC stack) in a process of
    its own, with `prism` from `root`'s tree, else this one; None when that tree cannot run
    it (a tree from before assembly.build_pipeline)."""
    first = [str(root), *map(str, sorted(root.glob("plugins/*/src")))] if root else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, str(ROOT), env.get("PYTHONPATH")]))
    calls = ["--calls", "1000", "--rounds", "3"] if quick else ["--calls", "5000", "--rounds", "7"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.stage_path", *calls, "--cases", ",".join(names)],
        stdout=subprocess.PIPE, text=True, cwd=root or ROOT, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        log(f"bench.stage_path failed for {root or 'this tree'} (exit status {proc.returncode})")
        return None
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def stage_path_table(stages: dict[str, dict[str, Any] | None]) -> str:
    """The stages alone: CPU µs per call of each case and what it adds over the one before."""
    parts = []
    for tree, result in stages.items():
        if result is None:
            continue
        rows, previous = [], None
        for name, m in result["cases"].items():
            us = m["us_per_call"]
            added = "-" if previous is None else f"{us - previous:+,.1f}"
            rows.append([name, f"{us:,.1f}", f"{m['us_per_call_min']:,.1f}", added])
            previous = us
        parts.append(
            f"### the stages alone{f' ({tree})' if tree else ''} (bench.stage_path: "
            "CallStages.before + Pipeline.unary with the in-process plugin + CallStages.after, "
            f"no gRPC stack; {result['calls']} calls a round, the cases interleaved)\n\n"
            + report.markdown_table(
                ["case", "CPU µs/call (median)", "min", "added over the case above"], rows
            )
        )
    return "\n\n".join(parts)


def path_table(paths: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    base = next((runs for tree, runs in paths.items() if tree), None)  # the --baseline tree's
    for tree, runs in paths.items():
        us = report.median(r["us_per_call"] for r in runs)
        versus = "-"
        if base is not None and tree == "":
            versus = report.fmt_ratio(us / report.median(r["us_per_call"] for r in base))
        rows.append(
            [
                tree or "this tree",
                f"{us:,.1f}",
                f"{min(r['us_per_call_min'] for r in runs):,.1f}",
                versus,
            ]
        )
    return (
        "### the plugin path alone (bench.proxy_path: target + execute_encoded + "
        "check_response, no gRPC stack)\n\n"
        + report.markdown_table(["tree", "CPU µs/call (median)", "min", "vs baseline"], rows)
    )


def _calibrate(root: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.calibration", "--quick"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"the calibration failed (exit status {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# -- profile ------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` → `func (package/module.py)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    parts = Path(match["file"]).parts
    return f"{match['func']} ({'/'.join(parts[-2:])})"


def profile_summary(raw: str, top: int = 25) -> dict[str, Any]:
    """py-spy's collapsed stacks → the share of samples per function, self and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    if not total:
        raise BenchError("py-spy recorded no samples")
    return {
        "samples": total,
        "self": [(name, n / total) for name, n in own.most_common(top)],
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top * 2)],
    }


def profile(h2: str, target: Target, load: h2load.Load, out: Path) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy (pip install py-spy; `nox -s bench` has it)")
    duration = load.duration_s or 10.0
    command = [
        spy, "record", "--rate", "250", "--duration", f"{duration + 1:g}", "--format", "raw",
        "--output", str(out), "--pid", str(target.process.pid),
    ]  # fmt: skip
    spy_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        h2load.run(
            h2, target.url, target.body, load,
            headers=target.headers, min_response_bytes=target.min_response,
        )  # fmt: skip
    finally:
        _, err = spy_proc.communicate(timeout=duration + 60)
    if spy_proc.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({spy_proc.returncode}): {err.decode(errors='replace')}")
    return profile_summary(out.read_text())


def profile_table(name: str, summary: dict[str, Any]) -> str:
    rows = [[f"{share * 100:.1f}%", f"`{func}`"] for func, share in summary["inclusive"]]
    own = [[f"{share * 100:.1f}%", f"`{func}`"] for func, share in summary["self"]]
    return (
        f"### profile of {name} ({summary['samples']} py-spy samples)\n\n"
        "Inclusive (the function and what it calls):\n\n"
        + report.markdown_table(["share", "function"], rows)
        + "\n\nSelf:\n\n"
        + report.markdown_table(["share", "function"], own)
    )


# -- report -------------------------------------------------------------------------------------


def results_table(targets: list[Target], medians: dict[str, dict[str, Any]]) -> str:
    header = [
        "server",
        "req/s (min..max)",
        "server CPU µs/req",
        "req/s per server core",
        "vs grpclib per core",
        "CPU vs prism-echo",
        "other CPU",
    ]
    grpclib, prism_echo = medians.get("grpclib"), medians.get("prism-echo")
    rows = []
    for t in targets:
        m = medians[t.name]
        rows.append(
            [
                t.name,
                f"{m['req_per_s']:,.0f} ({m['req_per_s_min']:,.0f}..{m['req_per_s_max']:,.0f})",
                f"{m['cpu_us_per_req']:,.0f}",
                f"{m['req_per_core_s']:,.0f}",
                report.fmt_ratio(
                    report.ratio(m["req_per_core_s"], grpclib and grpclib["req_per_core_s"])
                ),
                report.fmt_ratio(
                    report.ratio(m["cpu_us_per_req"], prism_echo and prism_echo["cpu_us_per_req"])
                ),
                f"{m['other_cpu_share'] * 100:.0f}%",
            ]
        )
    return report.markdown_table(header, rows)


def stage_table(targets: list[Target], medians: dict[str, dict[str, Any]], tree: str) -> str:
    """CPU per request of each case and what it adds over the case before it."""
    cases = [t for t in targets if t.case and t.tree == tree]
    rows, previous = [], None
    for t in cases:
        cpu = medians[t.name]["cpu_us_per_req"]
        added = "-" if previous is None else f"{cpu - previous:+,.0f}"
        rows.append([t.case, CASES[t.case].description, f"{cpu:,.0f}", added])
        previous = cpu
    title = f"### cost per stage{f' ({tree})' if tree else ''}\n\n"
    return title + report.markdown_table(
        ["case", "what runs", "server CPU µs/req", "added over the case above"], rows
    )


def verdicts(targets: list[Target], medians: dict[str, dict[str, Any]], tree: str) -> list[str]:
    lines = []
    grpclib, prism_echo = medians.get("grpclib"), medians.get("prism-echo")
    by_case = {t.case: medians[t.name] for t in targets if t.case and t.tree == tree}
    label = f" ({tree})" if tree else ""
    route = by_case.get("route")
    if route is not None and prism_echo is not None:
        ratio = route["cpu_us_per_req"] / prism_echo["cpu_us_per_req"]
        ok = ratio <= ROUTE_VS_PRISM_ECHO
        lines.append(
            f"- in-process plugin path{label} (route): {ratio:.2f}x prism-echo's CPU per request "
            f"(target ≤ {ROUTE_VS_PRISM_ECHO}x): **{'PASS' if ok else 'FAIL'}**"
        )
    full = [c for c in by_case if CASES[c].all_stages]
    if grpclib is not None:
        if full:
            m = by_case[full[-1]]
            ratio = m["req_per_core_s"] / grpclib["req_per_core_s"]
            ok = ratio >= ALL_STAGES_VS_GRPCLIB
            lines.append(
                f"- every stage on{label} ({full[-1]}): {ratio:.2f}x grpclib's req/s per core "
                f"(target ≥ {ALL_STAGES_VS_GRPCLIB}x): **{'PASS' if ok else 'FAIL'}**"
            )
        elif by_case:
            last = list(by_case)[-1]
            ratio = by_case[last]["req_per_core_s"] / grpclib["req_per_core_s"]
            lines.append(
                f"- every stage on{label}: not measured (no case has every stage yet); the "
                f"fullest case, {last}: {ratio:.2f}x grpclib's req/s per core "
                f"(target ≥ {ALL_STAGES_VS_GRPCLIB}x once every stage is on)"
            )
    return lines


def log(message: str) -> None:
    print(f"[bench proxy] {message}", file=sys.stderr, flush=True)


class ProxySuite:
    name = "proxy"
    summary = (
        "the whole proxy, stage by stage: Execute get on in-process memstore under h2load, "
        "beside bare grpclib and prism echo servers (req/s, CPU µs per request, ratios)"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--cases",
            help=f"comma-separated, from: {', '.join(CASES)} (default: all)",
        )
        parser.add_argument(
            "--baseline",
            type=Path,
            metavar="DIR",
            help="also run every case with `prism` from DIR (an export of an earlier commit, "
            "e.g. `git archive main | tar -x -C DIR`), in the same rounds",
        )
        parser.add_argument(
            "--baseline-label",
            default=BASELINE,
            metavar="NAME",
            help=f"what the tables call --baseline's tree (default {BASELINE!r})",
        )
        parser.add_argument(
            "--duration", type=float, help="seconds per run (default 10, --quick 2)"
        )
        parser.add_argument(
            "--profile",
            metavar="CASE",
            help="sample CASE's proxy (this tree's) with py-spy during one more run",
        )
        parser.add_argument(
            "--value-size", type=int, default=100, help="bytes of the value read (default 100)"
        )

    def run(self, args: argparse.Namespace) -> int:
        h2 = h2load.find_h2load()
        for module in ("grpc", "grpc_tools", "grpclib"):
            if importlib.util.find_spec(module) is None:
                raise BenchError(f"{module} is not installed (use `nox -s bench`)")
        names = [n.strip() for n in (args.cases or ",".join(CASES)).split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            raise BenchError(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
        if args.profile is not None and args.profile not in names:
            raise BenchError(f"--profile {args.profile}: not one of the cases run ({names})")
        baseline: Path | None = args.baseline.resolve() if args.baseline else None
        if baseline is not None:
            if not (baseline / "prism" / "cli" / "main.py").is_file():
                raise BenchError(f"--baseline {baseline}: no prism/cli/main.py there")
            # Its processes run from DIR (`python -m` imports from the working directory
            # first) and must run this tree's bench/ (bench.servers.prism_proxy).
            shutil.rmtree(baseline / "bench", ignore_errors=True)
            shutil.copytree(
                ROOT / "bench", baseline / "bench", ignore=shutil.ignore_patterns("results")
            )
        repeat: int = args.repeat or (1 if args.quick else 3)
        duration: float = args.duration or (2.0 if args.quick else 10.0)
        load = h2load.Load(clients=4, streams=16, duration_s=duration)
        warm = h2load.Load(clients=4, streams=16, requests=1000 if args.quick else 5000)
        stamp = report.timestamp()
        results_dir: Path = args.results_dir
        logs = results_dir / "logs" / f"proxy-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        env = report.environment(
            PACKAGES,
            {
                "h2load": h2load.h2load_version(h2),
                "repeat": repeat,
                "load": asdict(load),
                "cases": names,
                "baseline": str(baseline) if baseline else None,
            },
        )
        log(f"cases: {', '.join(names)}; {repeat} round(s) of {duration:g}s; logs in {logs}")
        data: dict[str, Any] = {"suite": self.name, "environment": env}
        parts: list[str] = []
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp_name:
            tmp = Path(tmp_name)
            stubs = tmp / "stubs"
            stubs.mkdir()
            echo.generate_stubs(stubs)
            echo_body = echo.write_body(tmp / "echo.bin", 100)
            from bench import plugin_client

            get_body = tmp / "get.bin"
            get_body.write_bytes(
                _grpc_frame(plugin_client.requests(NAMESPACE, "get", args.value_size)[0])
            )
            targets = [
                Target(
                    "grpclib",
                    ServerProcess(
                        "grpclib", "bench.servers.grpclib_echo", ["--stubs", str(stubs)],
                        logs / "grpclib.log",
                    ),
                    "", echo_body, echo_body.stat().st_size,
                ),
                Target(
                    "prism-echo",
                    ServerProcess(
                        "prism-echo", "bench.servers.prism_echo", [], logs / "prism-echo.log"
                    ),
                    "", echo_body, echo_body.stat().st_size,
                ),
            ]  # fmt: skip
            trees: list[tuple[str, Path | None]] = [("", None)]
            if baseline is not None:
                trees.append((args.baseline_label, baseline))
            for tree, root in trees:
                for name in names:
                    case = CASES[name]
                    label = f"{tree}/{name}" if tree else name
                    why = case.unsupported(root or ROOT)
                    if why is not None:
                        log(f"SKIPPING {label}: {why}")
                        continue
                    setup = case.setup(tmp)
                    process = ProxyProcess(label, case, setup, tmp, logs, root)
                    targets.append(
                        Target(label, process, "", get_body, 0, setup.headers, name, tree)
                    )
            calibration = {"before": _calibrate()}
            runs: list[Run] = []
            try:
                for t in targets:
                    t.process.start(timeout_s=60)
                    t.url = f"http://{t.process.host}:{t.process.port}"
                    if t.case:
                        t.url += EXECUTE
                        t.min_response = _check_proxy(t, args.value_size) + 5
                    else:
                        t.url += echo.METHOD
                        echo.check_echo(stubs, t.process.host, t.process.port, 100)
                    log(f"{t.name} up on port {t.process.port} (pid {t.process.pid}), checked")
                for round_no in range(repeat):
                    shift = round_no % len(targets)
                    for t in targets[shift:] + targets[:shift]:
                        if round_no == 0:
                            h2load.run(
                                h2, t.url, t.body, warm,
                                headers=t.headers, min_response_bytes=t.min_response,
                            )  # fmt: skip
                        run = measure(h2, t, load, round_no)
                        runs.append(run)
                        log(
                            f"round {round_no + 1}/{repeat} {t.name:24} {run.req_per_s:9,.0f} "
                            f"req/s {run.cpu_us_per_req:7,.0f} CPU µs/req, other load "
                            f"{run.other_cpu_s / run.finished_s:4.0%}"
                        )
                if args.profile is not None:
                    chosen = next(t for t in targets if t.case == args.profile and not t.tree)
                    log(f"profiling {chosen.name} with py-spy")
                    summary = profile(h2, chosen, load, logs / f"profile-{args.profile}.txt")
                    data["profile"] = {"case": args.profile, **summary}
                for t in targets:  # still answering after the load?
                    if t.case:
                        _check_proxy(t, args.value_size)
                    t.process.check_alive()
            finally:
                for t in targets:
                    t.process.stop()
            calibration["after"] = _calibrate()
            paths: dict[str, list[dict[str, Any]]] = {tree: [] for tree, _ in trees}
            for _ in range(1 if args.quick else 3):  # alternately, so both see the same noise
                for tree, root in trees:
                    paths[tree].append(plugin_path(root, args.quick))
            stages = {tree: stage_path(root, names, args.quick) for tree, root in trees}
        medians = {t.name: summarize([r for r in runs if r.target == t.name]) for t in targets}
        data.update(
            calibration=calibration,
            cases={n: CASES[n].description for n in names},
            medians=medians,
            runs=[asdict(r) for r in runs],
        )
        parts.append(
            f"### Execute get (in-process memstore) vs bare echo servers, h2load -c "
            f"{load.clients} -m {load.streams}, {duration:g}s per run\n\n"
            + results_table(targets, medians)
        )
        data["plugin_path"] = paths
        parts.append(path_table(paths))
        data["stage_path"] = stages
        if any(result is not None for result in stages.values()):
            parts.append(stage_path_table(stages))
        for tree, _ in trees:
            parts.append(stage_table(targets, medians, tree))
            parts.append("\n".join(verdicts(targets, medians, tree)))
        parts.append(
            "Calibration (`bench.calibration --quick`, fixed pure-Python work, µs): "
            f"before {calibration['before']['python_us']:,.0f}, after "
            f"{calibration['after']['python_us']:,.0f}; load average "
            f"{calibration['before']['loadavg']:.1f} → {calibration['after']['loadavg']:.1f}."
        )
        if "profile" in data:
            parts.append(profile_table(args.profile, data["profile"]))
        markdown = "\n\n".join(parts)
        markdown += (
            f"\n\nMedians of {repeat} round(s); {env['date_utc']}; commit {env['git_commit']}"
            + (f" (baseline: {baseline})" if baseline else "")
            + f"; {env['cpus']} CPUs ({env['cpu_model']}); h2load and servers on the same "
            f"machine; `{' '.join(env['command'])}`."
        )
        path = report.write_results(results_dir, f"proxy-{stamp}", data, markdown)
        print(markdown)
        log(f"results: {path}")
        return 0


register(ProxySuite())
