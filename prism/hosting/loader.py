"""Finding, checking and importing a Python plugin class.

A plugin reference is an entry point name in the ``prism.plugins`` group (``memstore``) or a
``package.module:Class`` path. The plugin's files are verified (permissions, signature) from
the module's location *before* anything is imported, and its API version after.

A plugin whose signature was checked is imported from the bytes the check read and verified
(:class:`VerifiedImporter`), not from its directory. Python's own import would read every
module's source from disk again, at import time (after the check, so a file changed in between
runs), and would prefer a matching ``.pyc`` in ``__pycache__``, which the manifest leaves out
(bytecode is rewritten by Python and specific to its version), so a tampered ``.pyc`` would run.
A private bytecode cache (``sys.pycache_prefix``) would answer the second only, for the whole
process; signing bytecode would bind signatures to one Python version and still leave the
first. Compiling the verified sources in memory answers both: after the check nothing is read
from the plugin's directory to be executed, and no bytecode is read or written. The price is
compiling the plugin's modules at every start, without a bytecode cache (memstore's 495 lines
compile in 2 to 9 ms on a busy 2-core machine). Unsigned plugins are imported as usual.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import sys
import zipfile
from collections.abc import Sequence
from importlib.metadata import entry_points
from importlib.resources.abc import Traversable, TraversableResources
from pathlib import Path
from types import CodeType, ModuleType

from prism.hosting.verify import (
    PluginRefused,
    VerifiedArtifact,
    VerifyPolicy,
    check_api_version,
    verify_artifact,
)
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
    """Verify, import and check the plugin class named by ``ref`` (a signed plugin from the
    bytes that were verified: see the module docstring)."""
    module_name, attr = resolve(ref)
    if policy is not None:
        verified = verify_artifact(ref, artifact_path(ref, module_name), policy)
        if verified is not None:
            VerifiedImporter.install(ref, module_name.partition(".")[0], verified)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginRefused(ref, f"importing {module_name!r} failed: {exc!r}") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, BackendPlugin):
        raise PluginRefused(ref, f"{module_name}:{attr} is not a BackendPlugin subclass")
    check_api_version(ref, cls.api_version)
    return cls


class VerifiedImporter(importlib.abc.MetaPathFinder):
    """Imports the top-level module ``name`` and everything under it from ``artifact``'s
    verified bytes only. A module name under it that the verified files do not hold (a file
    added after the check, bytecode without source) is not found, rather than looked up on disk.

    It stays on ``sys.meta_path`` for the life of the process, since a plugin may import its
    own modules at any time; the import system is process-wide, so that is where it lives."""

    def __init__(self, plugin: str, name: str, artifact: VerifiedArtifact) -> None:
        self.plugin = plugin
        self.name = name
        self.artifact = artifact
        self._resources: zipfile.ZipFile | None = None

    @classmethod
    def install(cls, plugin: str, name: str, artifact: VerifiedArtifact) -> None:
        """Put an importer for ``name`` first on ``sys.meta_path`` (replacing an earlier one
        for other bytes). PluginRefused when ``name`` was already imported from anything but
        these same verified bytes: that code ran, and cannot be unloaded."""
        loaded = sys.modules.get(name)
        if loaded is not None:
            previous = getattr(getattr(loaded, "__spec__", None), "loader", None)
            if isinstance(previous, _VerifiedLoader) and (
                previous.importer.artifact.digest == artifact.digest
            ):
                return
            how = "other" if isinstance(previous, _VerifiedLoader) else "unverified"
            raise PluginRefused(
                plugin,
                f"module {name!r} was already imported in this process from {how} files; an "
                "in-process plugin's code is loaded once: restart the proxy to load this version",
            )
        sys.meta_path[:] = [
            finder
            for finder in sys.meta_path
            if not (isinstance(finder, VerifiedImporter) and finder.name == name)
        ]
        sys.meta_path.insert(0, cls(plugin, name, artifact))

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name and not fullname.startswith(self.name + "."):
            return None
        artifact = self.artifact
        if not artifact.package:
            if fullname != self.name:
                return None  # a plain module has no submodules: the import system says so
            key = next(iter(artifact.files))
            if key.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                return self._extension_spec(fullname, key)
            return self._spec(fullname, key, package=False)
        rel = "/".join(fullname.split(".")[1:])
        prefix = f"{rel}/" if rel else ""
        # The order of Python's own FileFinder: a package, then extension modules, then source.
        if f"{prefix}__init__.py" in artifact.files:
            return self._spec(fullname, f"{prefix}__init__.py", package=True)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if rel and f"{rel}{suffix}" in artifact.files:
                return self._extension_spec(fullname, f"{rel}{suffix}")
        if rel and f"{rel}.py" in artifact.files:
            return self._spec(fullname, f"{rel}.py", package=False)
        if any(key.startswith(prefix) for key in artifact.files):
            # A directory without __init__.py: a package with no code of its own, as Python
            # would import it (a namespace package), confined to the verified files.
            spec = importlib.machinery.ModuleSpec(
                fullname, _VerifiedLoader(self, None, None, package=True), is_package=True
            )
            spec.submodule_search_locations = [str(artifact.root / rel)]
            return spec
        raise ModuleNotFoundError(
            f"no module named {fullname!r} among the verified files of plugin {self.plugin!r}",
            name=fullname,
        )

    def _spec(self, fullname: str, key: str, *, package: bool) -> importlib.machinery.ModuleSpec:
        if not key.endswith(".py"):
            raise ImportError(
                f"plugin {self.plugin!r}: {key} is not Python source; a signed plugin is imported "
                "from the sources its signature covers",
                name=fullname,
            )
        origin = self.artifact.root / key
        loader = _VerifiedLoader(self, origin, self.artifact.files[key], package=package)
        spec = importlib.util.spec_from_file_location(
            fullname,
            origin,
            loader=loader,
            submodule_search_locations=[str(origin.parent)] if package else None,
        )
        assert spec is not None
        return spec

    def _extension_spec(self, fullname: str, key: str) -> importlib.machinery.ModuleSpec:
        # The dynamic loader can only map a file. Its bytes are compared with the verified ones
        # just before, which narrows the window to the dlopen() itself but cannot close it: a
        # plugin that must not have one is pure Python.
        origin = self.artifact.root / key
        if origin.read_bytes() != self.artifact.files[key]:
            raise ImportError(
                f"plugin {self.plugin!r}: {origin} changed since its signature was verified",
                name=fullname,
            )
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(origin))
        spec = importlib.util.spec_from_file_location(fullname, origin, loader=loader)
        assert spec is not None
        return spec

    def resources(self, directory: str) -> Traversable:
        """The verified files under ``directory`` (``""`` = the package), as a read-only tree."""
        if self._resources is None:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for key, data in self.artifact.files.items():
                    archive.writestr(key, data)
            self._resources = zipfile.ZipFile(buffer)
        return zipfile.Path(self._resources, at=f"{directory}/" if directory else "")


class _VerifiedLoader(importlib.abc.InspectLoader):
    """One module compiled from verified source (``source`` None: a package without code)."""

    def __init__(
        self,
        importer: VerifiedImporter,
        origin: Path | None,
        source: bytes | None,
        *,
        package: bool,
    ) -> None:
        self.importer = importer
        self.origin = origin
        self.source = source
        self.package = package

    def is_package(self, fullname: str) -> bool:
        return self.package

    def get_source(self, fullname: str) -> str | None:
        return None if self.source is None else importlib.util.decode_source(self.source)

    def get_code(self, fullname: str) -> CodeType | None:
        if self.source is None:
            return compile("", f"<verified package {fullname}>", "exec", dont_inherit=True)
        return compile(self.source, str(self.origin), "exec", dont_inherit=True)

    def get_resource_reader(self, fullname: str) -> TraversableResources | None:
        if not self.package:
            return None
        return _VerifiedResources(self.importer, "/".join(fullname.split(".")[1:]))


class _VerifiedResources(TraversableResources):
    """``importlib.resources.files(package)`` of a verified plugin: the verified bytes."""

    def __init__(self, importer: VerifiedImporter, directory: str) -> None:
        self.importer = importer
        self.directory = directory

    def files(self) -> Traversable:
        return self.importer.resources(self.directory)
