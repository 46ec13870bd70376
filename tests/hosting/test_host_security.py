"""Plugins the host refuses, with errors that name the plugin and the reason: a sidecar with
an incompatible handshake, plugin files anyone may change, a signature by an untrusted key —
in-process and as sidecars (where the runner checks the files it imports), and from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from host_testkit import REPO, namespace, proxy_config, running_proxy

from prism.config import PluginSecurityConfig
from prism.hosting.host import PluginStartFailed
from prism.hosting.verify import write_signature

PLUGIN_SOURCE = """
from prism.sdk import BackendPlugin, OperationContext, operation


class Plugin(BackendPlugin):
    name = "tiny"

    @operation("ping", params=bytes, result=bytes)
    async def ping(self, params: bytes, ctx: OperationContext) -> bytes:
        return b"pong:" + params
"""


def write_plugin(site: Path) -> tuple[str, Path]:
    """A plugin package under ``site`` (a fresh name, so no test sees another's import);
    returns its ``module:Class`` reference and its directory."""
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    package = site / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    return f"{name}:Plugin", package


def refused(*fragments: str) -> pytest.RaisesGroup[PluginStartFailed]:
    """A proxy start that fails with one PluginStartFailed whose message has every fragment."""

    def check(exc: PluginStartFailed) -> bool:
        return all(f in str(exc) for f in fragments)

    return pytest.RaisesGroup(
        pytest.RaisesExc(PluginStartFailed, check=check), flatten_subgroups=True
    )


async def start(config: object) -> None:
    with trio.fail_after(20):
        async with running_proxy(config):  # type: ignore[arg-type]
            pass


async def test_host_refuses_sidecar_with_incompatible_handshake() -> None:
    command = (
        sys.executable,
        "-c",
        "import os, time; print('starting', flush=True); "
        "print('PRISM|1|9|unix|' + os.environ['PRISM_PLUGIN_SOCKET'] + '|grpc', flush=True); "
        "time.sleep(30)",
    )
    ns = namespace("legacy", "legacy-plugin", "sidecar", command=command)
    with refused(
        "namespace 'legacy'",
        "plugin 'legacy-plugin'",
        "plugin protocol version 9, but the proxy offered only 1",
    ):
        await start(proxy_config(ns))


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_host_refuses_world_writable_plugin(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    ref, package = write_plugin(site)
    package.chmod(0o777)
    if mode == "in_process":
        monkeypatch.syspath_prepend(str(site))
    else:
        # Only the sidecar can import it: the runner, in the plugin's process, refuses it.
        monkeypatch.setenv("PYTHONPATH", str(site))
    with refused(f"plugin {ref!r}", f"{package} is world-writable"):
        await start(proxy_config(namespace("tiny", ref, mode)))


@pytest.mark.parametrize("mode", ["in_process", "sidecar"])
async def test_host_refuses_plugin_signed_by_untrusted_key(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    ref, package = write_plugin(site)
    trusted, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_file = tmp_path / "release.pub"
    key_file.write_bytes(
        trusted.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    write_signature(package, other)
    if mode == "in_process":
        monkeypatch.syspath_prepend(str(site))
    else:
        monkeypatch.setenv("PYTHONPATH", str(site))
    security = PluginSecurityConfig(require_signatures=True, trusted_keys=(str(key_file),))
    config = proxy_config(namespace("tiny", ref, mode), plugin_security=security)
    with refused(f"plugin {ref!r}", "does not verify with any of the 1 trusted key(s)"):
        await start(config)

    # Signed by the trusted key, the same plugin starts and serves.
    write_signature(package, trusted)
    with trio.fail_after(20):
        async with running_proxy(config) as running:
            response = await running.execute("tiny", "ping", b"x")
            assert response.raw_result == b"pong:x"


def test_host_refusal_from_cli_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    site = tmp_path / "site"
    ref, package = write_plugin(site)
    package.chmod(0o777)
    config = tmp_path / "prism.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "admin: {enabled: false}\n"
        f"namespaces:\n  - name: tiny\n    plugin: {{name: '{ref}', mode: sidecar}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-m", "prism.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("prism: namespace 'tiny': plugin ")
    assert f"{package} is world-writable" in last
    assert "Traceback" not in done.stderr
