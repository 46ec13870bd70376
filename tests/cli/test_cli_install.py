"""``prism plugin install`` and ``prism plugin update`` as an operator runs them: wheels built
here, venvs made for real, a real proxy whose sidecar runs the installed version; no network."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import yaml

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.sdk.typed import pack, unpack

_SCRIPT = Path(sys.executable).with_name("prism")
PRISM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prism.cli.main"]
DIST = "prism-plugin-tinyplug"
PACKAGE = "prism_plugin_tinyplug"

PLUGIN = """\
from __future__ import annotations

from collections.abc import Mapping

from prism._proto.prism.data.v1 import GetRequest, GetResponse
from prism.sdk import BackendPlugin, OperationContext, operation

VERSION = {version!r}


class TinyPlugin(BackendPlugin):
    name = "tinyplug"
    config_type = None
    api_version = {api!r}

    async def initialize(
        self, config: None, credentials: Mapping[str, str], namespace: str
    ) -> None:
        pass

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        return GetResponse(found=True, value=VERSION.encode())
"""


def build_wheel(directory: Path, version: str, api: str = "1.0") -> Path:
    """A pure-Python wheel of the tinyplug plugin, written as the wheel spec says."""
    info = f"{PACKAGE}-{version}.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": PLUGIN.format(version=version, api=api),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\nRequires-Dist: prism-proxy\n"
        ),
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: prism-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": f"[prism.plugins]\ntinyplug = {PACKAGE}:TinyPlugin\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{PACKAGE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def prism(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PRISM, *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="prism-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _get(target: str) -> bytes:
    request = ExecuteRequest(namespace="tiny", operation="get", typed_params=pack(GetRequest("k")))
    with trio.fail_after(30):
        async with pg.open_channel(target) as channel:
            reply = await channel.unary_unary(
                "/prism.proxy.v1.DataProxy/Execute", request, ExecuteResponse
            )
    return unpack(reply.typed_result, GetResponse).value


def front_get(log: Path) -> bytes:
    line = next(x for x in log.read_text().splitlines() if "prism listening on" in x)
    target = line.split("prism listening on ")[1].split()[0]
    return trio.run(_get, target)


def test_plugin_install_verifies_into_its_own_venv_and_update_hot_reloads_the_sidecar(
    tmp_path: Path, short_dir: Path
) -> None:
    plugins = tmp_path / "plugins"
    opts = ("--plugins-dir", str(plugins), "--no-index")
    installed = prism("plugin", "install", str(build_wheel(tmp_path, "1.0.0")), *opts)
    assert installed.returncode == 0, installed.stderr
    home = plugins / DIST
    assert installed.stdout.startswith(
        f"installed {DIST} 1.0.0 into {home / '1.0.0'} (verified: tinyplug); "
        f"{home / 'current'} -> 1.0.0\nsidecar namespaces run it with:\n  command: "
    )
    command = json.loads(installed.stdout.splitlines()[2].split("command: ", 1)[1])
    assert command == [str(home / "current/bin/python"), "-m", "prism.hosting.launcher", "tinyplug"]
    assert os.readlink(home / "current") == "1.0.0"

    socket = short_dir / "admin.sock"
    config = tmp_path / "prism.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "admin": {"unix_socket": str(socket)},
                "shutdown_grace": 1.0,
                "namespaces": [
                    {
                        "name": "tiny",
                        "plugin": {"name": "tinyplug", "mode": "sidecar", "command": command},
                        "access": {"anonymous": True},
                    }
                ],
            }
        )
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([*PRISM, "serve", "--config", str(config)], stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "prism listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert front_get(log) == b"1.0.0"

        admin = ("--admin", f"unix:{socket}")
        v2 = build_wheel(tmp_path, "2.0.0")
        updated = prism("plugin", "update", DIST, "--wheel", str(v2), *opts, *admin)
        assert updated.returncode == 0, updated.stderr
        lines = updated.stdout.splitlines()
        assert lines[0].startswith(f"installed {DIST} 2.0.0 into {home / '2.0.0'}")
        assert lines[1].startswith("namespace 'tiny' reloaded on 2.0.0: instance ")
        assert front_get(log) == b"2.0.0"
        assert os.readlink(home / "current") == "2.0.0"
        assert (home / "1.0.0").is_dir()  # the old version stays installed

        # A version the proxy would refuse is never pointed at, and nothing is reloaded.
        bad = build_wheel(tmp_path, "3.0.0", api="9.0")
        refused = prism("plugin", "update", DIST, "--wheel", str(bad), *opts, *admin)
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.startswith("prism: verify failed: plugin 'tinyplug' refused: ")
        assert "PLUGIN_API_VERSION" in refused.stderr or "9.0" in refused.stderr
        assert os.readlink(home / "current") == "2.0.0"
        assert not (home / "3.0.0").exists()
        assert front_get(log) == b"2.0.0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_plugin_install_refuses_what_is_not_a_wheel_or_a_plugin(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    missing = prism(
        "plugin",
        "install",
        str(tmp_path / "nope-1.0-py3-none-any.whl"),
        "--plugins-dir",
        str(plugins),
        "--no-index",
    )
    assert missing.returncode == 1
    assert missing.stderr == f"prism: {tmp_path / 'nope-1.0-py3-none-any.whl'}: not a wheel file\n"
    offline = prism(
        "plugin", "install", "prism-plugin-absent==1.0", "--plugins-dir", str(plugins), "--no-index"
    )
    assert offline.returncode == 1
    assert offline.stderr.startswith("prism: pip install failed: ")
    assert not any((plugins / "prism-plugin-absent").iterdir())  # nothing half-installed
