"""``prism plugin list|status|reload|keygen|sign`` as an operator runs them: real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

_SCRIPT = Path(sys.executable).with_name("prism")
PRISM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prism.cli.main"]

SIGNED_PLUGIN = """\
from __future__ import annotations

from collections.abc import Mapping

from prism._proto.prism.data.v1 import GetRequest, GetResponse
from prism.sdk import BackendPlugin, OperationContext, operation


class SignedPlugin(BackendPlugin):
    name = "signedplug"
    config_type = None

    async def initialize(
        self, config: None, credentials: Mapping[str, str], namespace: str
    ) -> None:
        pass

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        return GetResponse(found=True, value=params.key.encode())
"""


def prism(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRISM, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="prism-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def serving(
    *args: str, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``prism serve ARGS`` until it logs that it listens; SIGTERM (graceful stop) afterwards."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*PRISM, "serve", *args], stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while "prism listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prism serve did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def namespaces(admin: str) -> dict[str, dict[str, object]]:
    result = prism("plugin", "list", "--json", "--admin", admin)
    assert result.returncode == 0, result.stderr
    return {ns["name"]: ns for ns in json.loads(result.stdout)["namespaces"]}


def test_plugin_reload_and_list_against_prism_serve(tmp_path: Path, short_dir: Path) -> None:
    admin = f"unix:{short_dir / 'admin.sock'}"
    args = ("--listen", "127.0.0.1:0", "--admin", admin, "--data-dir", str(tmp_path / "data"))
    with serving(*args, log=tmp_path / "serve.log"):
        before = namespaces(admin)
        assert list(before) == ["kv", "durable"]
        assert before["kv"]["plugin"] == "memstore"
        assert before["kv"]["mode"] == "in_process"
        assert before["kv"]["available"] is True

        result = prism("plugin", "reload", "kv", "--admin", admin)
        assert result.returncode == 0, result.stderr
        match = re.fullmatch(
            r"namespace 'kv' reloaded: instance (\d+) is serving \(took [\d.]+ s\)\n", result.stdout
        )
        assert match, result.stdout
        after = namespaces(admin)
        assert after["kv"]["generation"] == int(match.group(1))
        assert int(match.group(1)) > before["kv"]["generation"]  # type: ignore[operator]
        assert after["durable"]["generation"] == before["durable"]["generation"]

        table = prism("plugin", "list", "--admin", admin)
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split() == [
            "NAMESPACE",
            "PLUGIN",
            "MODE",
            "INSTANCE",
            "STATE",
            "IN-FLIGHT",
            "HEALTH",
        ]
        assert rows[0].split()[:5] == ["kv", "memstore", "in_process", match.group(1), "available"]

        unknown = prism("plugin", "reload", "nope", "--admin", admin)
        assert (unknown.returncode, unknown.stdout) == (1, "")
        assert unknown.stderr == "prism: unknown namespace 'nope'\n"


TOKEN = "s3cret-admin-token-0f9a"
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike the test's virtualenv
# What any local user could run: the admin API's HTTP side with the standard library only.
NOBODY_CLIENT = """\
import sys, urllib.error, urllib.request
base = sys.argv[1]
for method, path, body in (
    ("GET", "/admin/plugin/list", None),
    ("POST", "/admin/plugin/reload", b'{"namespace": "durable"}'),
    ("POST", "/admin/plugin/disable", b'{"namespace": "durable"}'),
    ("POST", "/admin/config/reload", b"{}"),
    ("GET", "/metrics", None),
    ("GET", "/healthz", None),
):
    request = urllib.request.Request(base + path, body, method=method)
    try:
        status = urllib.request.urlopen(request).status
    except urllib.error.HTTPError as exc:
        status = exc.code
    print(path, status)
"""


def token_config(tmp_path: Path) -> Path:
    """A config whose admin token is a secret in a secrets directory."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin-token").write_text(TOKEN + "\n")
    path = tmp_path / "prism.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "admin": {"listen": "127.0.0.1:0", "token": "{{ secret:admin-token }}"},
                "secrets": {"directory": "secrets"},
                "shutdown_grace": 1.0,
                "namespaces": [
                    {
                        "name": "durable",
                        "plugin": {"name": "sqlite"},
                        "config": {"path": "durable.sqlite3"},
                        "access": {"anonymous": True},
                    }
                ],
            }
        )
    )
    return path


def test_plugin_status_over_tcp_admin_sends_the_token_from_environment_or_file(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    with serving("--config", str(token_config(tmp_path)), log=log):
        port = re.search(r"admin API on 127\.0\.0\.1:(\d+)", log.read_text())
        assert port, log.read_text()
        target = f"127.0.0.1:{port.group(1)}"
        env = {**os.environ, "PRISM_ADMIN": target, "PRISM_ADMIN_TOKEN": TOKEN}
        result = prism("plugin", "status", "durable", "--json", env=env)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert (status["name"], status["plugin"], status["available"]) == (
            "durable",
            "sqlite",
            True,
        )
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        listed = prism("plugin", "list", "--admin", target, "--token-file", str(token_file))
        assert listed.returncode == 0, listed.stderr

        bare = {k: v for k, v in os.environ.items() if k != "PRISM_ADMIN_TOKEN"}
        for args in (("list",), ("reload", "durable"), ("disable", "durable")):
            refused = prism("plugin", *args, "--admin", target, env=bare)
            assert (refused.returncode, refused.stdout) == (1, "")
            assert refused.stderr == (
                f"prism: {target}: not authenticated: give --token-file or $PRISM_ADMIN_TOKEN\n"
            )
        wrong = prism("plugin", "list", "--admin", target, env={**bare, "PRISM_ADMIN_TOKEN": "x"})
        assert wrong.returncode == 1
        assert "not authenticated: check the token" in wrong.stderr
        assert namespaces_with(target, env)["durable"]["available"] is True  # nothing changed
    assert TOKEN not in log.read_text()


def namespaces_with(admin: str, env: Mapping[str, str]) -> dict[str, dict[str, object]]:
    result = prism("plugin", "list", "--json", "--admin", admin, env=env)
    assert result.returncode == 0, result.stderr
    return {ns["name"]: ns for ns in json.loads(result.stdout)["namespaces"]}


def test_admin_tcp_port_refuses_another_local_user_without_the_token(tmp_path: Path) -> None:
    """Issue 9: any local user (tested as nobody) could list namespaces and trigger reloads
    over the loopback TCP admin port. Now every such call is 401; only /healthz answers."""
    log = tmp_path / "serve.log"
    with serving("--config", str(token_config(tmp_path)), log=log):
        port = re.search(r"admin API on 127\.0\.0\.1:(\d+)", log.read_text())
        assert port, log.read_text()
        target = f"127.0.0.1:{port.group(1)}"
        env = {**os.environ, "PRISM_ADMIN_TOKEN": TOKEN}
        generation = namespaces_with(target, env)["durable"]["generation"]
        run_as = {"user": "nobody"} if os.geteuid() == 0 else {}
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", NOBODY_CLIENT, f"http://{target}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **run_as,  # type: ignore[call-overload]
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "/admin/plugin/list 401",
            "/admin/plugin/reload 401",
            "/admin/plugin/disable 401",
            "/admin/config/reload 401",
            "/metrics 401",
            "/healthz 200",
        ]
        after = namespaces_with(target, env)["durable"]
        assert (after["generation"], after["disabled"]) == (generation, False)


def test_plugin_list_cannot_reach_admin_exits_1(short_dir: Path) -> None:
    target = f"unix:{short_dir / 'nobody.sock'}"
    result = prism("plugin", "list", "--admin", target)
    assert result.returncode == 1
    assert result.stderr.startswith(f"prism: cannot reach the admin API at {target}: ")
    assert "Traceback" not in result.stderr


def test_plugin_keygen_writes_private_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "release.key"
    result = prism("plugin", "keygen", str(key))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "release.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")

    original = key.read_bytes()
    again = prism("plugin", "keygen", str(key))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert key.read_bytes() == original


def test_signed_plugin_loads_and_tampered_plugin_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "release.key"
    key.parent.mkdir()
    assert prism("plugin", "keygen", str(key)).returncode == 0
    package = tmp_path / "pkgs" / "signedplug"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(SIGNED_PLUGIN)
    signed = prism("plugin", "sign", str(package), "--key", str(key))
    assert signed.returncode == 0, signed.stderr
    assert (tmp_path / "pkgs" / "signedplug.sig").exists()

    config = tmp_path / "prism.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "admin": {"enabled": False},
                "plugin_security": {
                    "require_signatures": True,
                    "trusted_keys": [str(key) + ".pub"],
                },
                "namespaces": [{"name": "signed", "plugin": {"name": "signedplug:SignedPlugin"}}],
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkgs")}
    with serving("--config", str(config), log=tmp_path / "serve.log", env=env):
        pass  # it started: the signature verified

    with (package / "__init__.py").open("a") as f:
        f.write("\nSTOLEN = True\n")
    refused = prism("serve", "--config", str(config), env=env)
    assert refused.returncode == 2
    assert "signedplug" in refused.stderr
    assert "signature" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_plugin_sign_rejects_a_key_that_is_not_an_ed25519_private_key(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert prism("plugin", "keygen", str(key)).returncode == 0
    artifact = tmp_path / "plugin.py"
    artifact.write_text("x = 1\n")
    result = prism("plugin", "sign", str(artifact), "--key", str(key) + ".pub")
    assert result.returncode == 1
    assert "not an unencrypted PEM private key" in result.stderr
    assert not (tmp_path / "plugin.py.sig").exists()


def test_config_reload_keeps_what_prism_serve_options_override(
    tmp_path: Path, short_dir: Path
) -> None:
    socket = short_dir / "admin.sock"
    admin = f"unix:{socket}"
    path = tmp_path / "prism.yaml"

    def write(**top: object) -> None:
        doc = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            "logging": {"level": "warning"},
            "namespaces": [
                {"name": "kv", "plugin": {"name": "memstore"}, "access": {"anonymous": True}}
            ],
            **top,
        }
        path.write_text(yaml.safe_dump(doc))

    def reload() -> list[str]:
        reloaded = prism("config", "reload", "--admin", admin)
        assert reloaded.returncode == 0, reloaded.stderr
        return reloaded.stdout.splitlines()[1:]

    write()
    args = ("--config", str(path), "--listen", "127.0.0.1:0", "--admin", admin)
    log = tmp_path / "serve.log"
    with serving(*args, "--log-level", "info", log=log):
        # The file as it was: the overridden listen, admin and logging are no change.
        assert reload() == ["unchanged: kv"]
        # The file's own values of overridden fields change: the command line still wins.
        write(listen="127.0.0.1:1", admin={"listen": "127.0.0.1:2"}, logging={"level": "error"})
        assert reload() == ["unchanged: kv"]
        # A field no option overrides still needs a restart.
        write(max_message_size=1 << 20)
        assert reload() == [
            "unchanged: kv",
            "restart required for max_message_size (the old value stays in force)",
        ]


def test_config_reload_on_sighup_and_by_prism_config_reload(
    tmp_path: Path, short_dir: Path
) -> None:
    socket = short_dir / "admin.sock"
    admin = f"unix:{socket}"

    def write(*names: str, **top: object) -> None:
        doc = {
            "listen": "127.0.0.1:0",
            "admin": {"unix_socket": str(socket)},
            "shutdown_grace": 1.0,
            "namespaces": [
                {"name": n, "plugin": {"name": "memstore"}, "access": {"anonymous": True}}
                for n in names
            ],
            **top,
        }
        path.write_text(yaml.safe_dump(doc))

    path = tmp_path / "prism.yaml"
    write("kv")
    log = tmp_path / "serve.log"
    with serving("--config", str(path), log=log) as proc:
        write("kv", "added")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while list(namespaces(admin)) != ["kv", "added"]:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        write("added", listen="127.0.0.1:1")
        reloaded = prism("config", "reload", "--admin", admin)
        assert reloaded.returncode == 0, reloaded.stderr
        lines = reloaded.stdout.splitlines()
        assert re.fullmatch(r"config [0-9a-f]{12} loaded", lines[0]), lines
        assert lines[1:] == [
            "removed: kv",
            "unchanged: added",
            "restart required for listen (the old value stays in force)",
        ]
        assert list(namespaces(admin)) == ["added"]

        path.write_text("namespaces: [{name: kv, plugin: {name: memstore, mode: nope}}]\n")
        proc.send_signal(signal.SIGHUP)
        rejected = prism("config", "reload", "--admin", admin, "--json")
        assert rejected.returncode == 1
        assert rejected.stderr.startswith(
            "prism: config rejected; the running configuration keeps serving: "
            "namespaces[0].plugin.mode:"
        )
        deadline = time.monotonic() + 30
        while "SIGHUP: config rejected" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert list(namespaces(admin)) == ["added"]
        assert proc.poll() is None
