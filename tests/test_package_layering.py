"""The house's layering, read from the source: who may import whom among prism's packages.

Static (every ``import`` anywhere in a module, function-level ones too), so an import that only
some code path reaches cannot hide.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PRISM = Path(__file__).resolve().parents[1] / "prism"

#: package → the prism packages it must never import (a prefix matches its submodules).
FORBIDDEN = {
    "prism.plugin_protocol": ("prism.sdk", "prism.hosting", "prism.proxy", "prism.cli"),
    "prism.sdk": ("prism.hosting", "prism.proxy", "prism.cli"),
    "prism.hosting": ("prism.proxy", "prism.cli"),
    "prism.config": ("prism.sdk", "prism.hosting", "prism.proxy", "prism.cli", "prism.grpc"),
    # The client is what applications import: the gRPC stack and the messages, nothing of the
    # proxy's or the plugins' side.
    "prism.client": ("prism.sdk", "prism.hosting", "prism.proxy", "prism.cli", "prism.config"),
}
#: ... except these.
ALLOWED: dict[str, tuple[str, ...]] = {}


def imported_modules(path: Path, module: str) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # ``from prism import hosting`` imports prism.hosting
                yield node.lineno, f"{name}.{alias.name}"


def modules(package: str) -> list[tuple[str, Path]]:
    root = PRISM.parent / package.replace(".", "/")
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(PRISM.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering_package_imports_only_what_is_below_it(package: str) -> None:
    found = modules(package)
    assert found, f"no modules in {package}"
    violations = []
    for module, path in found:
        for line, name in imported_modules(path, module):
            if any(_within(name, allowed) for allowed in ALLOWED.get(package, ())):
                continue
            if any(_within(name, forbidden) for forbidden in FORBIDDEN[package]):
                violations.append(f"{path.relative_to(PRISM.parent)}:{line} imports {name}")
    assert violations == []


def test_layering_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from prism.hosting import loader\n")
    names = [name for _, name in imported_modules(source, "prism.sdk.x")]
    assert "prism.hosting.loader" in names
