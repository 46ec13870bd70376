"""prism.protos: every generated message has a public import path, the same class as the
generated one, and no documentation imports the generated package ``prism._proto``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import prism._proto
from prism.grpc import health

REPO = Path(__file__).resolve().parents[1]

# Generated package → its public module. grpc.reflection's messages are prism.grpc.reflection's
# own business (clients use their own reflection stubs, as grpcurl does).
PUBLIC = {
    "prism._proto.prism.data.v1": "prism.protos.data.v1",
    "prism._proto.prism.proxy.v1": "prism.protos.proxy.v1",
    "prism._proto.prism.plugin.v1": "prism.protos.plugin.v1",
    "prism._proto.prism.config.v1": "prism.protos.config.v1",
    "prism._proto.prism.admin.v1": "prism.protos.admin.v1",
    "prism._proto.google.protobuf": "prism.protos.google.protobuf",
    "prism._proto.grpc.health.v1": "prism.grpc.health",
}
INTERNAL = {"prism._proto.grpc.reflection.v1", "prism._proto.grpc.reflection.v1alpha"}


def _generated_packages() -> set[str]:
    """Every generated package that defines messages (some directories are namespace
    packages, which pkgutil does not walk)."""
    root = Path(prism._proto.__file__).parent
    found = set()
    for init in root.rglob("__init__.py"):
        name = ".".join(("prism", "_proto", *init.parent.relative_to(root).parts))
        if getattr(importlib.import_module(name), "__all__", ()):
            found.add(name)
    return found


def test_protos_every_generated_package_has_a_public_path() -> None:
    assert _generated_packages() == set(PUBLIC) | INTERNAL


@pytest.mark.parametrize(("generated", "public"), PUBLIC.items())
def test_protos_every_public_name_resolves_to_the_generated_class(
    generated: str, public: str
) -> None:
    source = importlib.import_module(generated)
    module = importlib.import_module(public)
    names = [n for n in source.__all__ if public != "prism.grpc.health" or "Health" in n]
    assert names
    for name in names:
        if public == "prism.grpc.health" and name == "HealthCheckResponseServingStatus":
            assert health.ServingStatus is source.HealthCheckResponseServingStatus
            continue
        assert getattr(module, name) is getattr(source, name), f"{public}.{name}"
        assert name in module.__all__, f"{public}.__all__ lacks {name}"


def _documentation() -> list[Path]:
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "plugins").glob("*/README.md")),
    ]


@pytest.mark.parametrize("path", _documentation(), ids=lambda p: str(p.relative_to(REPO)))
def test_protos_documentation_never_imports_the_generated_package(path: Path) -> None:
    lines = [
        f"{path.name}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "prism._proto" in line
    ]
    assert lines == [], "use the public paths in prism.protos (or prism.grpc.health)"
