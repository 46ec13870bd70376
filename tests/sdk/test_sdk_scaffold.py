"""prism.sdk.scaffold: `prism plugin init` writes a plugin whose tests pass."""

from __future__ import annotations

import filecmp
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prism.sdk.scaffold import scaffold


def _run_tests(root: Path) -> subprocess.CompletedProcess[str]:
    """The scaffold's own tests, in a subprocess, with its package on the path (not installed)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_scaffold_writes_a_distribution_whose_tests_pass(tmp_path: Path) -> None:
    root = scaffold("my_cache", tmp_path / "my-cache")
    assert (root / "src/prism_plugin_my_cache/plugin.py").is_file()
    pyproject = (root / "pyproject.toml").read_text()
    assert 'my_cache = "prism_plugin_my_cache:MyCachePlugin"' in pyproject
    result = _run_tests(root)
    assert result.returncode == 0, result.stdout + result.stderr
    # set/get twice, empty key, max_keys, config as the proxy sends it, 4 bad configs
    assert "9 passed" in result.stdout


def test_scaffold_has_a_config_proto_and_uses_its_message(tmp_path: Path) -> None:
    root = scaffold("my_cache", tmp_path / "p")
    proto = (root / "protos/prism/plugins/my_cache/v1/config.proto").read_text()
    assert "package prism.plugins.my_cache.v1;" in proto
    assert "message MyCacheConfig {" in proto
    plugin = (root / "src/prism_plugin_my_cache/plugin.py").read_text()
    assert "config_type = MyCacheConfig" in plugin
    assert "config.max_keys" in plugin
    code = (
        "from prism_plugin_my_cache import MyCacheConfig, MyCachePlugin\n"
        "from prism.sdk import type_url\n"
        "assert MyCachePlugin.config_type is MyCacheConfig\n"
        "print(type_url(MyCacheConfig))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "type.googleapis.com/prism.plugins.my_cache.v1.MyCacheConfig"


def _pinned_compiler() -> tuple[Path, Path]:
    """(protoc plugin, its bin directory) of the pinned betterproto2-compiler.

    Missing tools fail the test (CI installs them: the noxfile's tests session)."""
    import betterproto2_compiler  # noqa: F401
    import grpc_tools.protoc  # noqa: F401

    module = Path(__file__).parents[2] / "prism/sdk/scaffold.py"
    pinned = re.search(r'_COMPILER_VERSION = "([^"]+)"', module.read_text())
    assert pinned is not None
    installed = importlib.metadata.version("betterproto2-compiler")
    if installed != pinned.group(1):
        pytest.fail(f"betterproto2-compiler {installed} installed; the template is for {pinned[1]}")
    bindir = Path(sys.executable).parent
    plugin = bindir / "protoc-gen-python_betterproto2"
    if not plugin.exists():
        found = shutil.which("protoc-gen-python_betterproto2")
        if found is None:
            pytest.fail("protoc-gen-python_betterproto2 is not installed")
        plugin = Path(found)
    return plugin, plugin.parent


def _same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees (missing on either side or not equal)."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    differ = sorted(str(p) for p in files_a ^ files_b)
    differ += sorted(
        str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)
    )
    return differ


@pytest.mark.parametrize(
    "name",
    [
        "my_cache",  # the register_message call on one line
        "abcdefghij",  # wrapped, arguments on one line
        "abcdefghijklmnopqrstuvwxyz_abcdefghijklmn",  # one argument per line (longest name)
        "a_b_c",  # betterproto2 would rename ABCConfig: the scaffold names it AbcConfig
        "x9y_z",
        "q",
    ],
)
def test_scaffold_generated_code_is_what_the_pinned_compiler_writes(
    tmp_path: Path, name: str
) -> None:
    plugin, bindir = _pinned_compiler()
    root = scaffold(name, tmp_path / "plugin")
    generated = tmp_path / "generated"
    generated.mkdir()
    # As the scaffold's README says: from its directory (the generator formats with ruff, which
    # reads the scaffold's pyproject.toml), with the compiler's own ruff first on the PATH.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--plugin=protoc-gen-python_betterproto2={plugin}",
            "-Iprotos",
            f"--python_betterproto2_out={generated}",
            "--python_betterproto2_opt=client_generation=none,server_generation=none",
            f"prism/plugins/{name}/v1/config.proto",
        ],
        cwd=root,
        env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _same_tree(generated, root / f"src/prism_plugin_{name}/_proto") == []


@pytest.mark.parametrize("name", ["my_cache", "abcdefghijklmnopqrstuvwxyz_abcdefghijklmn"])
def test_scaffold_code_is_ruff_clean(tmp_path: Path, name: str) -> None:
    ruff = shutil.which(
        "ruff", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if ruff is None:
        pytest.fail("ruff is not installed (the noxfile's tests session installs it)")
    root = scaffold(name, tmp_path / "plugin")
    # With the scaffold's own configuration (line length 100, generated code excluded), plus
    # the rule families Prism uses. E501 stays off: a 41-character name makes module paths long.
    for command in (
        [ruff, "check", "--extend-select", "I,UP,B,SIM,PT,RUF,ASYNC,W", "."],
        [ruff, "format", "--check", "."],
    ):
        result = subprocess.run(
            command, cwd=root, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["Bad", "1x", "a-b", "", "import", "class"])
def test_scaffold_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plugin name"):
        scaffold(name, tmp_path / "x")


def test_scaffold_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        scaffold("fine", tmp_path)
