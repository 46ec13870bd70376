"""Finding, checking and importing a Python plugin class.

A plugin reference is an entry point name in the ``prism.plugins`` group (``memstore``) or a
``package.module:Class`` path. The plugin's files are verified (permissions, signature) from
the module's location *before* anything is imported, and its API version after.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from prism.hosting.verify import PluginRefused, VerifyPolicy, check_api_version, verify_artifact
from prism.sdk.plugin import BackendPlugin

ENTRY_POINT_GROUP = "prism.plugins"


def resolve(ref: str) -> tuple[str, str]:
    """``ref`` → ``(module, attribute)``; PluginRefused when no such plugin is installed."""
    if ":" in ref:
        module, _, attr = ref.partition(":")
        if not module or not attr:
            raise PluginRefused(ref, "a plugin path must look like package.module:Class")
        return module, attr
    found = entry_points(group=ENTRY_POINT_GROUP, name=ref)
    for ep in found:
        module, _, attr = ep.value.partition(":")
        return module, attr
    installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise PluginRefused(
        ref,
        f"no plugin of that name in entry point group {ENTRY_POINT_GROUP!r} "
        f"(installed: {', '.join(installed) or 'none'})",
    )


def artifact_path(ref: str, module: str) -> Path:
    """The file or package directory a plugin module would be imported from."""
    try:
        spec = importlib.util.find_spec(module.partition(".")[0])
    except (ImportError, ValueError) as exc:
        raise PluginRefused(ref, f"cannot find module {module!r}: {exc}") from None
    if spec is None:
        raise PluginRefused(ref, f"module {module!r} is not installed")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin is None:
        raise PluginRefused(ref, f"module {module!r} has no file to verify")
    return Path(spec.origin)


def load_plugin_class(ref: str, policy: VerifyPolicy | None = None) -> type[BackendPlugin]:
    """Verify, import and check the plugin class named by ``ref``."""
    module_name, attr = resolve(ref)
    if policy is not None:
        verify_artifact(ref, artifact_path(ref, module_name), policy)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginRefused(ref, f"importing {module_name!r} failed: {exc!r}") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, BackendPlugin):
        raise PluginRefused(ref, f"{module_name}:{attr} is not a BackendPlugin subclass")
    check_api_version(ref, cls.api_version)
    return cls
