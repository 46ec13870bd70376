"""The suite runs as one pytest session over tests/ and every plugin's tests/, with rootdir
imports: two test files with one basename stop the whole session at collection."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_suite_layout_test_file_names_are_unique() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for base in (ROOT / "tests", *sorted((ROOT / "plugins").glob("*/tests"))):
        for path in base.rglob("test_*.py"):
            if ".nox" not in path.parts:
                seen[path.name].append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
