"""prism.sdk.scaffold: `prism plugin init` writes a plugin whose tests pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prism.sdk.scaffold import scaffold


def test_scaffold_writes_a_distribution_whose_tests_pass(tmp_path: Path) -> None:
    root = scaffold("my_cache", tmp_path / "my-cache")
    assert (root / "src/prism_plugin_my_cache/plugin.py").is_file()
    pyproject = (root / "pyproject.toml").read_text()
    assert 'my_cache = "prism_plugin_my_cache:MyCachePlugin"' in pyproject
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


@pytest.mark.parametrize("name", ["Bad", "1x", "a-b", ""])
def test_scaffold_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plugin name"):
        scaffold(name, tmp_path / "x")


def test_scaffold_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        scaffold("fine", tmp_path)
