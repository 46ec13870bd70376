"""The acceptance framework's pytest side: the session environment (backends, one proxy),
options, the parametrization of suites over targets, and the results table.

- ``--only NAME`` (repeatable; ``nox -s acceptance -- redis``): only the targets named so, or
  using that backend. Backends and the proxy start on first use, so unselected servers never
  start.
- ``--acceptance-docs PATH`` (``nox -s acceptance -- --update-docs``): write the table into the
  file between its ``acceptance-table`` markers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
PLUGINS_DIR = HERE / "testplugins"
sys.path.insert(0, str(PLUGINS_DIR))

import trio  # noqa: E402
from backends import BACKENDS, TestBackend  # noqa: E402
from report import Tally, render_table, write_docs  # noqa: E402
from targets import TARGETS, Target  # noqa: E402

from prism.config import (  # noqa: E402
    AdminConfig,
    NamespaceConfig,
    PluginConfig,
    ProxyConfig,
)
from prism.proxy.app import Proxy  # noqa: E402

log = logging.getLogger("prism.acceptance")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("prism acceptance")
    group.addoption(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the targets with this name or backend (repeatable)",
    )
    group.addoption(
        "--acceptance-docs",
        default=None,
        metavar="PATH",
        help="write the results table into PATH (between its acceptance-table markers)",
    )


def selected_targets(config: pytest.Config) -> list[Target]:
    only = set(config.getoption("--only"))
    known = {t.name for t in TARGETS} | {t.backend for t in TARGETS if t.backend}
    unknown = only - known - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(
            f"--only {', '.join(sorted(unknown))}: no such target or backend "
            f"(targets: {', '.join(t.name for t in TARGETS)}; backends: {', '.join(BACKENDS)})"
        )
    return [t for t in TARGETS if not only or t.matches(only)]


# -- the session environment ------------------------------------------------------------------


class SessionProxy:
    """A proxy serving every selected target in-process and as a sidecar, run in a thread of
    its own for the whole session (pytest-trio gives each test its own Trio run; the proxy is a
    server reached over TCP, like any client reaches it)."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.address = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="acceptance-proxy", daemon=True)

    def start(self) -> str:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"the acceptance proxy did not start: {self._error!r}")
        return self.address

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    proxy: Proxy = await nursery.start(Proxy(self.config).run)
                    assert proxy.address is not None
                    self.address = f"{proxy.address[0]}:{proxy.address[1]}"
                    self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        """Cancelling the proxy sends every plugin Shutdown and stops the sidecars."""
        if self._token is not None and self._scope is not None and self._thread.is_alive():
            scope = self._scope
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)
        self._thread.join(60)


class Env:
    """What a whole test session shares: a directory, the backends, one proxy."""

    def __init__(self, directory: Path, targets: list[Target]) -> None:
        self.directory = directory
        self.targets = targets
        self._backends: dict[str, TestBackend] = {}
        self._proxy: SessionProxy | None = None
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="pacc-"))  # short: socket paths

    def backend(self, kind: str) -> TestBackend:
        backend = self._backends.get(kind)
        if backend is None:
            backend = BACKENDS[kind]()
            self._backends[kind] = backend  # stopped at the end even if start fails halfway
            backend.start()
        return backend

    @staticmethod
    def namespace(target: Target, mode: str) -> str:
        return f"{target.name}.{mode}"

    def proxy_address(self) -> str:
        if self._proxy is None:
            namespaces = []
            for target in self.targets:
                for mode in target.modes:
                    if mode == "direct":
                        continue
                    if target.backend is not None:
                        self.backend(target.backend)
                    namespaces.append(
                        NamespaceConfig(
                            self.namespace(target, mode),
                            PluginConfig(
                                target.plugin,
                                mode=mode,
                                command=_command(target),
                                health_interval=5.0,
                                drain_grace=2.0,
                            ),
                            config=target.config(self),
                            credentials=target.credentials(self),
                        )
                    )
            self._proxy = SessionProxy(
                ProxyConfig(
                    listen="127.0.0.1:0",
                    admin=AdminConfig(enabled=False, listen=None),
                    shutdown_grace=2.0,
                    runtime_dir=self.runtime_dir,
                    namespaces=tuple(namespaces),
                )
            )
            self._proxy.start()
        return self._proxy.address

    def close(self) -> None:
        try:
            if self._proxy is not None:
                self._proxy.stop()
        finally:
            for backend in self._backends.values():
                try:
                    backend.stop()
                except Exception:
                    log.exception("stopping %s failed", backend.kind)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _command(target: Target) -> tuple[str, ...] | None:
    if target.plugin_command is None:
        return None
    program, *rest = target.plugin_command
    return (sys.executable if program == "python" else program, *rest)


@pytest.fixture(scope="session")
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    directory = Path(tempfile.mkdtemp(prefix="prism-acceptance-"))
    previous = os.environ.get("PYTHONPATH")
    # The sidecars import the test plugins by module path, as the proxy's own process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS_DIR), previous]))
    session = Env(directory, selected_targets(request.config))
    try:
        yield session
    finally:
        try:
            session.close()
        finally:
            if previous is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = previous
            shutil.rmtree(directory, ignore_errors=True)


# -- parametrization and the table ------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY] = Tally()
    config.addinivalue_line(
        "markers", "acceptance_unselected: no target of this test was selected (deselected)"
    )


TALLY = pytest.StashKey[Tally]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    targets = selected_targets(metafunc.config)
    generate = getattr(metafunc.module, "acceptance_cases", None)
    if generate is None:
        return
    names, cases, ids = generate(metafunc, targets)
    if not {n.strip() for n in names.split(",")} <= set(metafunc.fixturenames):
        return  # another test in the module
    if not cases:  # nothing selected for this test: deselected below, never "skipped"
        width = len(names.split(","))
        cases = [pytest.param(*([None] * width), marks=pytest.mark.acceptance_unselected)]
        ids = ["unselected"]
    metafunc.parametrize(names, cases, ids=ids)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--only"):  # the framework's self-tests concern no one backend
        for item in items:
            if item.path.name == "test_negative_proof.py":
                item.add_marker(pytest.mark.acceptance_unselected)
    unselected = [i for i in items if i.get_closest_marker("acceptance_unselected")]
    if unselected:
        config.hook.pytest_deselected(items=unselected)
        items[:] = [i for i in items if not i.get_closest_marker("acceptance_unselected")]
    tally = config.stash[TALLY]
    for item in items:
        row = getattr(item, "callspec", None)
        label = None if row is None else row.params.get("acceptance_label")
        if label is not None:
            tally.expect(*label)
            item.user_properties.append(("acceptance", label))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    label = dict(item.user_properties).get("acceptance")
    if label is not None and (report.when == "call" or not report.passed):
        item.config.stash[TALLY].record(*label, passed=report.passed, when=report.when)
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tally = config.stash[TALLY]
    if not tally.expected or config.option.collectonly:
        return
    table = render_table(tally)
    terminalreporter.section("plugin acceptance")
    for line in table.splitlines():
        terminalreporter.write_line(line)
    path = config.getoption("--acceptance-docs")
    if path:
        if config.getoption("--only") or config.getoption("keyword"):
            terminalreporter.write_line(f"not writing {path}: this run was a selection")
        else:
            write_docs(Path(path), table)
            terminalreporter.write_line(f"wrote the table to {path}")
