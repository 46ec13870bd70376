"""Fixtures for the hosting tests: a fake sidecar plugin written to tmp_path."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hosting_fakes import FAKE_PLUGIN

from prism.hosting.process import PluginSpec

MakeSpec = Callable[..., PluginSpec]


@pytest.fixture
def fake_plugin_path(tmp_path: Path) -> Path:
    path = tmp_path / "fake_plugin.py"
    path.write_text(FAKE_PLUGIN)
    return path


@pytest.fixture
def make_spec(fake_plugin_path: Path) -> MakeSpec:
    """``make_spec("--crash-after", "0.1", stop_grace=0.5)``: a PluginSpec for the fake."""

    def make(*args: str, name: str = "fake", **overrides: Any) -> PluginSpec:
        command = [sys.executable, "-I", str(fake_plugin_path), *args]
        return PluginSpec(name=name, command=command, **overrides)

    return make
