"""``import prism``: cheap (nothing below it is imported until used), with ``prism.serve``,
``prism.RunningProxy``, ``prism.client`` and ``prism.config`` reachable from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import prism


def test_prism_import_loads_nothing_below_it() -> None:
    code = (
        "import sys, prism\n"
        "loaded = sorted(m for m in sys.modules if m == 'trio' or m.startswith('prism.'))\n"
        "print(loaded)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_prism_lazy_names_resolve_to_their_modules() -> None:
    from prism.proxy import embed

    assert prism.serve is embed.serve
    assert prism.RunningProxy is embed.RunningProxy
    assert prism.client.connect is not None
    assert prism.config.ProxyConfig.__name__ == "ProxyConfig"
    assert prism.ListenFailed.__module__ == "prism.proxy.app"
    assert prism.ConfigError is prism.config.ConfigError
    assert {"PluginRefused", "PluginStartFailed"} <= set(dir(prism)) | set(prism.__all__)
    for name in prism.__all__:
        assert getattr(prism, name) is not None


def test_prism_unknown_attribute_is_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = prism.nonsense  # type: ignore[attr-defined]
