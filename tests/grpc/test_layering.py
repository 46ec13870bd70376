"""Layering rules that keep the stack embeddable (ARCHITECTURE.md §6.1).

``prism.grpc.wire`` is sans-IO: it must load without trio, ssl or socket, so that it can be
driven by any event loop (or none). ``prism`` never imports the plugin distributions.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import prism.grpc.wire

IO_MODULES = ("trio", "ssl", "socket")

# Prints, as JSON, which IO modules are loaded after importing every module of prism.grpc.wire,
# and which of them h2 alone already loads (those are h2's business, not a layering breach).
_PROBE = textwrap.dedent(
    """
    import importlib, importlib.util, json, pkgutil, sys, types

    io = {io!r}
    if {stub_parent!r}:
        # Skip prism/grpc/__init__.py: check what wire's own code pulls in.
        spec = importlib.util.find_spec("prism.grpc")
        parent = types.ModuleType("prism.grpc")
        parent.__path__ = list(spec.submodule_search_locations)
        sys.modules["prism.grpc"] = parent
    import h2.config, h2.connection, h2.events, h2.exceptions, h2.settings
    by_h2 = [m for m in io if m in sys.modules]
    import prism.grpc.wire as wire
    names = sorted(m.name for m in pkgutil.iter_modules(wire.__path__))
    for name in names:
        importlib.import_module("prism.grpc.wire." + name)
    print(json.dumps({{"modules": names, "by_h2": by_h2,
                       "loaded": [m for m in io if m in sys.modules]}}))
    """
)


def _probe(*, stub_parent: bool) -> dict[str, list[str]]:
    code = _PROBE.format(io=IO_MODULES, stub_parent=stub_parent)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, list[str]] = json.loads(result.stdout)
    return probe


def test_layering_wire_modules_import_no_io() -> None:
    probe = _probe(stub_parent=True)
    assert {"framing", "metadata", "status", "timeout"} <= set(probe["modules"])
    assert "trio" not in probe["loaded"]
    breaches = [m for m in probe["loaded"] if m not in probe["by_h2"]]
    assert breaches == [], f"prism.grpc.wire imports {breaches}: it must stay sans-IO"


def test_layering_import_prism_grpc_wire_loads_no_trio() -> None:
    probe = _probe(stub_parent=False)
    breaches = [m for m in probe["loaded"] if m not in probe["by_h2"]]
    assert breaches == [], (
        f"`import prism.grpc.wire` loads {breaches}: prism/grpc/__init__.py (or a wire module) "
        "imports the Trio adapters eagerly; import them lazily there"
    )


def test_layering_h2_itself_needs_no_trio() -> None:
    assert "trio" not in _probe(stub_parent=True)["by_h2"]


def _forbidden_imports(path: Path) -> list[str]:
    """Imports of the plugin distributions, static or through importlib/__import__."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
        ):
            names = [node.args[0].value]
        found += [
            f"{path}:{getattr(node, 'lineno', 0)}: {name}"
            for name in names
            if name.split(".")[0] == "plugins" or name.startswith("prism_plugin_")
        ]
    return found


def test_layering_prism_never_imports_plugins() -> None:
    root = Path(prism.grpc.wire.__file__).parents[2]
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 5
    offenders = [hit for path in sources for hit in _forbidden_imports(path)]
    assert offenders == [], "the proxy core finds plugins through entry points, never by import"


def test_layering_forbidden_import_detector_sees_every_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import plugins.redis\n"
        "from prism_plugin_redis import Plugin\n"
        "import importlib\n"
        "importlib.import_module('prism_plugin_sqlite')\n"
        "import plugin_helpers, prism.plugins_registry\n"
        "from . import plugins\n",
        encoding="utf-8",
    )
    assert [hit.split(": ")[1] for hit in _forbidden_imports(sample)] == [
        "plugins.redis",
        "prism_plugin_redis",
        "prism_plugin_sqlite",
    ]
