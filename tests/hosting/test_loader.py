"""Importing a plugin whose signature was checked: what runs is exactly what was verified. A
tampered ``.pyc`` (which the signed manifest leaves out) never runs, nor does a source file
changed or added after the check; a signed plugin still loads and serves, in-process and as a
sidecar (whose runner imports it in the child)."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import py_compile
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from host_testkit import namespace, proxy_config, running_proxy

from prism.config import PluginSecurityConfig
from prism.hosting.loader import load_plugin_class
from prism.hosting.verify import PluginRefused, VerifyPolicy, write_signature

PLUGIN = """
from prism.sdk import BackendPlugin, OperationContext, operation


class Plugin(BackendPlugin):
    name = "signed"

    @operation("ping", params=bytes, result=bytes)
    async def ping(self, params: bytes, ctx: OperationContext) -> bytes:
        return b"pong:" + params

    @operation("late", params=bytes, result=bytes)
    async def late(self, params: bytes, ctx: OperationContext) -> bytes:
        from . import late  # imported on first call, long after the signature check

        return late.VALUE
"""


def tamper(marker: Path, what: str) -> str:
    """Source that leaves ``marker`` behind when it runs."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text({what!r})\nVALUE = b'evil'\n"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def policy(key: Ed25519PrivateKey) -> VerifyPolicy:
    return VerifyPolicy(require_signature=True, trusted_keys=(key.public_key(),))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on this process's and its sidecars' import path; what the tests import
    from it (and the importers for it) is forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    meta_path = list(sys.meta_path)
    yield site
    sys.meta_path[:] = meta_path
    for name in [m for m in sys.modules if m.startswith("signed_")]:
        del sys.modules[name]


def write_package(site: Path, files: dict[str, str]) -> tuple[str, Path]:
    """A package of ``files`` under a fresh name (no test sees another's import)."""
    name = f"signed_{uuid.uuid4().hex[:8]}"
    package = site / name
    for rel, text in files.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    return name, package


def plant_bytecode(source_file: Path, source: str) -> Path:
    """Bytecode of ``source`` where Python looks for ``source_file``'s cached bytecode, marked
    unchecked-hash: Python's own import uses it without looking at the source at all."""
    fake = source_file.with_name("planted_source.txt")
    fake.write_text(source)
    cached = Path(importlib.util.cache_from_source(str(source_file)))
    py_compile.compile(
        str(fake),
        cfile=str(cached),
        dfile=str(source_file),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    fake.unlink()
    return cached


def test_load_plugin_class_signed_package_never_runs_tampered_bytecode(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    name, package = write_package(
        site, {"__init__.py": "from .plugin import Plugin\n", "plugin.py": PLUGIN}
    )
    write_signature(package, key)
    planted = plant_bytecode(package / "plugin.py", tamper(marker, "plugin.pyc ran") + PLUGIN)
    plant_bytecode(package / "__init__.py", tamper(marker, "__init__.pyc ran"))

    cls = load_plugin_class(f"{name}:Plugin", policy)

    assert cls.name == "signed"
    assert not marker.exists()
    # Nothing was compiled to disk either: the planted files are all the cache holds.
    assert sorted(p.name for p in planted.parent.iterdir()) == sorted(
        Path(importlib.util.cache_from_source(str(package / f))).name
        for f in ("plugin.py", "__init__.py")
    )


def test_load_plugin_class_signed_module_file_never_runs_tampered_bytecode(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    name = f"signed_{uuid.uuid4().hex[:8]}"
    module = site / f"{name}.py"
    module.write_text(PLUGIN.replace("from . import late", "late = None"))
    write_signature(module, key)
    plant_bytecode(module, tamper(marker, "module .pyc ran") + PLUGIN)

    assert load_plugin_class(f"{name}:Plugin", policy).name == "signed"
    assert not marker.exists()


def test_load_plugin_class_signed_runs_the_verified_source_when_a_file_changes_after_the_check(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    # Its __init__ changes ops.py on disk before importing it: what someone racing the import,
    # between the signature check and Python reading ops.py, would do.
    init = (
        "import pathlib\n"
        f"pathlib.Path(__file__).with_name('ops.py').write_text({tamper(marker, 'ops ran')!r})\n"
        "from . import ops\n"
        "from .plugin import Plugin\n"
    )
    name, package = write_package(
        site, {"__init__.py": init, "ops.py": "VALUE = b'verified'\n", "plugin.py": PLUGIN}
    )
    write_signature(package, key)

    load_plugin_class(f"{name}:Plugin", policy)

    assert "ran" in (package / "ops.py").read_text()  # the file did change...
    assert not marker.exists()  # ...but what ran is what was verified
    assert sys.modules[f"{name}.ops"].VALUE == b"verified"


def test_load_plugin_class_signed_does_not_import_a_module_added_after_the_check(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    name, package = write_package(
        site, {"__init__.py": "from .plugin import Plugin\n", "plugin.py": PLUGIN}
    )
    write_signature(package, key)
    load_plugin_class(f"{name}:Plugin", policy)
    (package / "extra.py").write_text(tamper(marker, "extra ran"))

    with pytest.raises(ModuleNotFoundError, match="among the verified files of plugin"):
        importlib.import_module(f"{name}.extra")
    assert not marker.exists()


def test_load_plugin_class_signed_subpackages_and_resources_are_the_verified_bytes(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy
) -> None:
    name, package = write_package(
        site,
        {
            "__init__.py": "from .plugin import Plugin\nfrom .sub.helpers import HELP\n",
            "plugin.py": PLUGIN,
            "sub/__init__.py": "",
            "sub/helpers.py": "HELP = 'help'\n",
            "data/schema.sql": "CREATE TABLE kv (k, v);\n",
        },
    )
    write_signature(package, key)
    load_plugin_class(f"{name}:Plugin", policy)
    (package / "data" / "schema.sql").write_text("DROP TABLE kv;\n")

    assert sys.modules[name].HELP == "help"
    schema = importlib.resources.files(name) / "data" / "schema.sql"
    assert schema.read_text() == "CREATE TABLE kv (k, v);\n"
    assert sorted(p.name for p in importlib.resources.files(name).iterdir()) == [
        "__init__.py",
        "data",
        "plugin.py",
        "sub",
    ]


def test_load_plugin_class_signed_twice_reuses_the_first_import(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy
) -> None:
    name, package = write_package(site, {"__init__.py": PLUGIN})
    write_signature(package, key)

    assert load_plugin_class(f"{name}:Plugin", policy) is load_plugin_class(
        f"{name}:Plugin", policy
    )


def test_load_plugin_class_refuses_signed_plugin_already_imported_unverified(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy
) -> None:
    name, package = write_package(site, {"__init__.py": PLUGIN})
    write_signature(package, key)
    importlib.import_module(name)

    with pytest.raises(PluginRefused, match="already imported in this process from unverified"):
        load_plugin_class(f"{name}:Plugin", policy)


def test_load_plugin_class_refuses_new_signed_version_of_an_imported_plugin(
    site: Path, key: Ed25519PrivateKey, policy: VerifyPolicy
) -> None:
    name, package = write_package(site, {"__init__.py": PLUGIN})
    write_signature(package, key)
    load_plugin_class(f"{name}:Plugin", policy)
    (package / "__init__.py").write_text(PLUGIN + "\nVERSION = 2\n")
    write_signature(package, key)

    with pytest.raises(PluginRefused, match="restart the proxy to load this version"):
        load_plugin_class(f"{name}:Plugin", policy)


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_loader_signed_plugin_serves_what_was_verified_through_the_proxy(
    mode: str, site: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    name, package = write_package(
        site,
        {
            "__init__.py": "from .plugin import Plugin\n",
            "plugin.py": PLUGIN,
            "late.py": "VALUE = b'verified'\n",
        },
    )
    write_signature(package, key)
    plant_bytecode(package / "plugin.py", tamper(marker, "plugin.pyc ran") + PLUGIN)
    key_file = tmp_path / "release.pub"
    key_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    security = PluginSecurityConfig(require_signatures=True, trusted_keys=(str(key_file),))
    config = proxy_config(namespace("signed", f"{name}:Plugin", mode), plugin_security=security)
    with trio.fail_after(30):
        async with running_proxy(config) as running:
            assert (await running.execute("signed", "ping", b"x")).raw_result == b"pong:x"
            # Changed once the plugin runs, before it first imports late.py.
            (package / "late.py").write_text(tamper(marker, "late.py ran"))
            assert (await running.execute("signed", "late", b"")).raw_result == b"verified"
    assert not marker.exists()
