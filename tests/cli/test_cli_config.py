"""``prism config check FILE`` and ``prism config schema`` as an operator runs them: real
processes, real files, a real JSON Schema validator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

_SCRIPT = Path(sys.executable).with_name("prism")
PRISM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prism.cli.main"]
SECRET = "v4lue-of-the-secret-5e1f"

GOOD = """\
listen: 127.0.0.1:6000
admin: {unix_socket: admin.sock}
secrets: {directory: secrets}
namespaces:
  - name: kv
    plugin: {name: memstore}
  - name: orders
    plugin:
      name: sqlite
      mode: sidecar
      env: {LOG_FORMAT: json}
      inherit_env: [TZ]
    config: {path: data/orders.sqlite3}
    credentials:
      token: "{{ secret:token }}"
      dsn: "user:{{ env:PRISM_TEST_PW }}@db"
"""


def prism(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PRISM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def good_file(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(SECRET + "\n")
    path = tmp_path / "prism.yaml"
    path.write_text(GOOD)
    return path


def test_cli_config_check_valid_file_prints_one_line_and_no_secret(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    done = prism("config", "check", str(path), PRISM_TEST_PW=SECRET)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"{path}: valid: 2 namespace(s) [kv (memstore, in_process), orders (sqlite, sidecar)], "
        f"2 credential(s) resolved, listen 127.0.0.1:6000, admin unix:{tmp_path / 'admin.sock'}\n"
    )
    assert SECRET not in done.stdout + done.stderr
    # Nothing was started: no socket, no database, no data directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prism.yaml", "secrets"]


def test_cli_config_check_lists_every_error_with_its_path_and_exits_1(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    (tmp_path / "secrets" / "token").unlink()
    path.write_text(
        GOOD.replace("mode: sidecar", "mode: sidecar\n      health_interval: .nan")
        + "  - name: kv\n    plugin: {name: memstore, colour: blue}\n"
    )
    done = prism("config", "check", str(path), PRISM_TEST_PW=SECRET)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "prism: namespaces[1].plugin.health_interval: expected a positive number (seconds), "
        "not NaN or infinity",
        "prism: namespaces[2].plugin.colour: unknown field",
    ]
    # Once the file is valid, its secrets are resolved: a missing one names field and secret.
    path.write_text(GOOD)
    done = prism("config", "check", str(path), PRISM_TEST_PW=SECRET)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"prism: namespaces[1].credentials.token: secret 'token' not found (no file "
        f"{tmp_path / 'secrets' / 'token'}; no environment variable PRISM_SECRET_TOKEN)"
    ]
    assert SECRET not in done.stderr


def test_cli_config_check_unreadable_file(tmp_path: Path) -> None:
    done = prism("config", "check", str(tmp_path / "absent.yaml"))
    assert (done.returncode, done.stdout) == (1, "")
    assert (
        done.stderr
        == f"prism: cannot read config {tmp_path / 'absent.yaml'}: No such file or directory\n"
    )


def schema() -> dict[str, Any]:
    done = prism("config", "schema")
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_cli_config_schema_is_a_valid_json_schema_that_accepts_valid_files() -> None:
    found = schema()
    assert found["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(found)
    validator = jsonschema.Draft202012Validator(found)
    validator.validate(yaml.safe_load(GOOD))
    validator.validate({})


def test_cli_config_schema_rejects_what_the_proxy_rejects() -> None:
    validator = jsonschema.Draft202012Validator(schema())
    bad: list[Any] = [
        {"listne": "127.0.0.1:1"},
        {"namespaces": [{"name": "kv"}]},
        {"namespaces": [{"name": "kv", "plugin": {"name": "m", "mode": "sideways"}}]},
        {"namespaces": [{"name": "kv", "plugin": {"name": "m", "health_interval": 0}}]},
        {"namespaces": [{"name": "kv", "plugin": {"name": "m", "limits": {"open_files": 1.5}}}]},
        {"admin": {"enabled": "yes"}},
        {"max_message_size": -1},
        {"listen": "nowhere"},
    ]
    for document in bad:
        assert not validator.is_valid(document), document
