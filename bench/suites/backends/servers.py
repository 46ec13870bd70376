"""The acceptance framework's real servers (``tests/acceptance/backends.py``), reused: each
starts as a local process in a temporary directory on a free loopback port, with its test
user. Loaded by path, so ``bench`` does not put the tests' directory on ``sys.path``."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from bench.procs import ROOT

_PATH = ROOT / "tests" / "acceptance" / "backends.py"


def module() -> ModuleType:
    name = "prism_acceptance_backends"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec is not None
    assert spec.loader is not None
    found = importlib.util.module_from_spec(spec)
    sys.modules[name] = found
    spec.loader.exec_module(found)
    return found
