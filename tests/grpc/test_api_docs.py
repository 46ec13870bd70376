"""docs/grpc-api.md's reference lists exactly prism.grpc's public names (its ``__all__``)."""

from __future__ import annotations

import re
from pathlib import Path

import prism.grpc

DOC = Path(__file__).resolve().parents[2] / "docs" / "grpc-api.md"
SECTION = "## Reference: every public name"


def _listed() -> list[str]:
    """The names in the first column of the reference's tables (```a`, `b``` lists several)."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC.name} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in section.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) > 1:
            names += re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[0])
    return names


def test_grpc_api_docs_reference_lists_every_public_name() -> None:
    listed = _listed()
    missing = sorted(set(prism.grpc.__all__) - set(listed))
    assert not missing, f"public in prism.grpc but not in {DOC.name}'s reference: {missing}"


def test_grpc_api_docs_reference_lists_nothing_that_is_not_public() -> None:
    listed = _listed()
    extra = sorted(set(listed) - set(prism.grpc.__all__))
    assert not extra, f"in {DOC.name}'s reference but not in prism.grpc.__all__: {extra}"
    assert len(listed) == len(set(listed)), "a name is listed twice"


def test_grpc_api_docs_every_public_name_exists() -> None:
    for name in prism.grpc.__all__:
        assert getattr(prism.grpc, name) is not None
