"""``prism plugin install NAME[==VERSION] | PATH.whl`` and ``prism plugin update NAME``: plugin
distributions in environments the proxy owns.

Layout: one virtual environment per plugin distribution and version, under the plugins
directory (``--plugins-dir``, ``$PRISM_PLUGINS_DIR``)::

    PLUGINS_DIR/<distribution>/<version>/       a venv holding that version (and its drivers)
    PLUGINS_DIR/<distribution>/current -> <version>

Why one per plugin, not one shared: plugins bring their backend drivers, and two plugins (or
two versions of one during an update) must not fight over a driver's version; an update
installs beside the running version, so the old one keeps serving until the new one is
healthy, and a failed install leaves nothing half-replaced. Each venv sees the proxy's own
packages (a ``.pth`` file naming the proxy's site-packages), so prism and what it depends on
are not installed again and are the very versions the proxy runs.

A version is verified in its own venv before ``current`` points at it, with the proxy's
policy (``--config``: its ``plugin_security``): each of its ``prism.plugins`` entry points is
loaded as the proxy would (file permissions, the signature when ``require_signatures``,
``PLUGIN_API_VERSION``). A refused one is deleted and ``current`` stays as it was.

Sidecar namespaces run it with ``command: [PLUGINS_DIR/<distribution>/current/bin/python, -m,
prism.hosting.launcher, <entry point>]``; ``update`` then hot-reloads each such namespace
through the admin API (the new process starts from the new ``current``; the old one serves until
the new one is healthy). An in-process plugin is imported once per proxy process: it needs a
restart, and ``update`` says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prism.config import PluginSecurityConfig

__all__ = ["Installed", "default_plugins_dir", "install", "sidecar_command"]

PLUGINS_DIR_ENV = "PRISM_PLUGINS_DIR"
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")

# Run by the new venv's interpreter: load every entry point of the distribution as the proxy
# would, and say what it installed. One JSON line on stdout, or a reason and exit status 2.
_VERIFY = """\
import json, sys
from importlib.metadata import PackageNotFoundError, distribution
from prism.hosting.loader import load_plugin_class
from prism.hosting.verify import PluginRefused, VerifyPolicy

name, policy_json = sys.argv[1], json.loads(sys.argv[2])
try:
    dist = distribution(name)
except PackageNotFoundError:
    print(f"the distribution {name!r} is not in the new environment", file=sys.stderr)
    raise SystemExit(2)
plugins = sorted(ep.name for ep in dist.entry_points if ep.group == "prism.plugins")
if not plugins:
    print(f"{name} {dist.version} has no 'prism.plugins' entry point", file=sys.stderr)
    raise SystemExit(2)
policy = VerifyPolicy.from_config(**policy_json)
for plugin in plugins:
    try:
        load_plugin_class(plugin, policy)
    except PluginRefused as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2)
print(json.dumps({"name": dist.metadata["Name"], "version": dist.version, "plugins": plugins}))
"""


class InstallError(Exception):
    """Printed as ``prism: <message>``; nothing was changed."""


@dataclass(frozen=True)
class Installed:
    distribution: str
    version: str
    plugins: list[str]  # its entry point names
    path: Path  # the version's venv
    current: Path  # PLUGINS_DIR/<distribution>/current
    previous: str | None  # the version current pointed at before, if any


def default_plugins_dir() -> Path:
    return Path(os.environ.get(PLUGINS_DIR_ENV, "prism-plugins"))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sidecar_command(installed: Installed, plugin: str) -> list[str]:
    return [str(installed.current / "bin" / "python"), "-m", "prism.hosting.launcher", plugin]


def install(
    spec: str,
    plugins_dir: Path,
    security: PluginSecurityConfig | None = None,
    *,
    upgrade: bool = False,
    index_args: tuple[str, ...] = (),
) -> Installed:
    """Install ``spec`` (``NAME``, ``NAME==VERSION`` or a wheel file) into a new venv, verify
    it, and point ``current`` at it. InstallError (with pip's or the verifier's reason) leaves
    everything as it was."""
    wheel = spec.endswith(".whl")
    if wheel:
        match = _WHEEL_NAME.match(Path(spec).name)
        if match is None or not Path(spec).is_file():
            raise InstallError(f"{spec}: not a wheel file")
        name = match.group("name")
        target = str(Path(spec).resolve())
    else:
        name = re.split(r"[=<>!~\[; ]", spec, maxsplit=1)[0]
        if not name:
            raise InstallError(f"{spec!r} names no distribution")
        target = spec
    plugins_dir.mkdir(parents=True, exist_ok=True)
    home = plugins_dir / canonical(name)
    home.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=home))
    try:
        python = _venv(staging)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        if upgrade:
            pip.append("--upgrade")
        _run([*pip, *index_args, target], "pip install")
        found = json.loads(
            _run([str(python), "-c", _VERIFY, name, json.dumps(_policy(security))], "verify")
        )
        version = found["version"]
        final = home / version
        if final.exists():
            shutil.rmtree(final)  # a reinstall of the same version: this one is verified
        staging.rename(final)
        _fix_venv_paths(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    current = home / "current"
    previous = os.readlink(current) if current.is_symlink() else None
    link = home / ".current.new"
    link.unlink(missing_ok=True)
    link.symlink_to(version)
    os.replace(link, current)  # atomic: a sidecar starting now sees the old or the new
    return Installed(found["name"], version, found["plugins"], final, current, previous)


def _policy(security: PluginSecurityConfig | None) -> dict[str, object]:
    sec = security or PluginSecurityConfig()
    return {
        "require_signature": sec.require_signatures,
        "trusted_keys": list(sec.trusted_keys),
        "check_permissions": sec.verify_permissions,
    }


def _venv(path: Path) -> Path:
    """A venv at ``path`` (with pip) that also sees the proxy's packages."""
    _run([_base_python(), "-m", "venv", str(path)], "python -m venv")
    python = path / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        "python",
    ).strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_prism_proxy_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def _base_python() -> str:
    """The interpreter a venv is made from: the proxy's own, or its base when it runs in a venv
    made without pip (uv, ``--without-pip``), whose ``venv`` would not install one."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(base) if base.exists() else sys.executable


def _fix_venv_paths(old: Path, new: Path) -> None:
    """Only ``bin/python -m ...`` is used, which finds its venv by its own location; scripts'
    shebang lines still name the staging path, so make them right for a human's use too."""
    for script in (new / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        try:
            text = script.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if str(old) in text:
            script.write_text(text.replace(str(old), str(new)))


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise InstallError(f"{what} failed: {reason}")
    return done.stdout


def point_current(installed: Installed, version: str) -> None:
    link = installed.current.parent / ".current.new"
    link.unlink(missing_ok=True)
    link.symlink_to(version)
    os.replace(link, installed.current)


def describe(installed: Installed) -> list[str]:
    lines = [
        f"installed {installed.distribution} {installed.version} into {installed.path} "
        f"(verified: {', '.join(installed.plugins)}); {installed.current} -> {installed.version}",
        "sidecar namespaces run it with:",
    ]
    lines += [f"  command: {json.dumps(sidecar_command(installed, p))}" for p in installed.plugins]
    return lines
