"""Prism: a data-access proxy on Trio.

``import prism`` is cheap: what is below is imported on first use. ``prism.serve`` runs the
whole proxy in a Trio application's nursery (docs/user-guide.md, "Embedding");
``prism.client`` is the client (docs/client.md); ``prism.config`` the configuration model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from prism import client, config
    from prism.config import ConfigError
    from prism.hosting.model import PluginStartFailed
    from prism.hosting.verify import PluginRefused
    from prism.proxy.app import ListenFailed
    from prism.proxy.embed import RunningProxy, serve

_LAZY = {
    "serve": "prism.proxy.embed",
    "RunningProxy": "prism.proxy.embed",
    # What a failed start raises (``prism serve`` prints them as one line each).
    "ConfigError": "prism.config",
    "ListenFailed": "prism.proxy.app",
    "PluginRefused": "prism.hosting.verify",
    "PluginStartFailed": "prism.hosting.model",
}
_SUBMODULES = frozenset({"client", "config"})

__all__ = [
    "ConfigError",
    "ListenFailed",
    "PluginRefused",
    "PluginStartFailed",
    "RunningProxy",
    "__version__",
    "client",
    "config",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"prism.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prism' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
