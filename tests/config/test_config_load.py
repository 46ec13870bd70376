"""The proxy's YAML configuration read from a file: every field, its default, errors that name
the field's path. (The ``admin`` section: test_config_admin.py; secrets:
test_config_secrets.py; the sidecar environment: test_config_plugin.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from prism.config import (
    ConfigError,
    LimitsConfig,
    NamespaceConfig,
    PluginConfig,
    PluginSecurityConfig,
    ProxyConfig,
    RemoteTlsConfig,
    TlsConfig,
    default_config,
    load_config,
    parse_config,
)

FULL = """
listen: 0.0.0.0:6000
tls:
  cert: certs/proxy.pem
  key: certs/proxy.key
  client_ca: certs/clients.pem
max_message_size: 1048576
shutdown_grace: 2.5
runtime_dir: run
plugin_security:
  verify_permissions: false
  require_signatures: true
  trusted_keys: [keys/release.pub]
namespaces:
  - name: sessions
    plugin:
      name: memstore
      mode: in_process
    config:
      max_keys: 100
      nested: {a: [1, 2]}
  - name: orders
    plugin:
      name: sqlite
      mode: sidecar
      command: [python, -m, my.runner]
      limits: {memory_mb: 512, cpu_seconds: 3600, open_files: 256}
      health_interval: 2
      startup_timeout: 7.5
      drain_grace: 3
    config:
      path: /var/lib/prism/orders.sqlite3
  - name: partner
    plugin:
      name: memstore
      mode: remote
      endpoint: plugins.internal:7443
      tls:
        ca: certs/plugins-ca.pem
        cert: certs/client.pem
        key: certs/client.key
        server_hostname: plugins.internal
    credentials:
      api_token: "{{ env:PRISM_TEST_TOKEN }}"
      password: "{{ file:SECRET_FILE }}"
      plain: not-a-reference
"""

TOKEN = "tok-3f9a1c-very-secret"
PASSWORD = "pw-8d2e44-also-secret"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prism.yaml"
    path.write_text(text)
    return path


def one_namespace(**plugin: Any) -> dict[str, Any]:
    return {"namespaces": [{"name": "kv", "plugin": {"name": "memstore", **plugin}}]}


@pytest.fixture
def full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProxyConfig:
    secret = tmp_path / "password.txt"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("PRISM_TEST_TOKEN", TOKEN)
    return load_config(write(tmp_path, FULL.replace("SECRET_FILE", str(secret))))


def test_config_reads_every_field(full: ProxyConfig, tmp_path: Path) -> None:
    assert full.listen == "0.0.0.0:6000"
    assert full.tls == TlsConfig(
        tmp_path / "certs/proxy.pem", tmp_path / "certs/proxy.key", tmp_path / "certs/clients.pem"
    )
    assert full.max_message_size == 1 << 20
    assert full.shutdown_grace == 2.5
    assert full.runtime_dir == tmp_path / "run"
    assert full.plugin_security == PluginSecurityConfig(
        verify_permissions=False,
        require_signatures=True,
        trusted_keys=(str(tmp_path / "keys/release.pub"),),
    )
    sessions, orders, partner = full.namespaces
    assert sessions == NamespaceConfig(
        "sessions",
        PluginConfig("memstore", "in_process"),
        config={"max_keys": 100, "nested": {"a": [1, 2]}},
    )
    assert orders.plugin == PluginConfig(
        "sqlite",
        "sidecar",
        command=("python", "-m", "my.runner"),
        limits=LimitsConfig(memory_mb=512, cpu_seconds=3600, open_files=256),
        health_interval=2.0,
        startup_timeout=7.5,
        drain_grace=3.0,
    )
    assert orders.config == {"path": "/var/lib/prism/orders.sqlite3"}
    assert partner.plugin == PluginConfig(
        "memstore",
        "remote",
        endpoint="plugins.internal:7443",
        tls=RemoteTlsConfig(
            tmp_path / "certs/plugins-ca.pem",
            tmp_path / "certs/client.pem",
            tmp_path / "certs/client.key",
            "plugins.internal",
        ),
    )
    assert full.namespace("orders") is orders
    with pytest.raises(KeyError):
        full.namespace("nope")


def test_config_keeps_secret_references_and_resolves_them_on_demand(full: ProxyConfig) -> None:
    partner = full.namespace("partner")
    assert partner.credentials["api_token"] == "{{ env:PRISM_TEST_TOKEN }}"
    assert full.resolve_credentials(partner) == {
        "api_token": TOKEN,
        "password": PASSWORD,
        "plain": "not-a-reference",
    }


def test_config_secrets_never_appear_in_repr(full: ProxyConfig) -> None:
    for text in (repr(full), str(full), repr(full.namespace("partner"))):
        assert TOKEN not in text
        assert PASSWORD not in text
        assert "not-a-reference" not in text


def test_config_load_fails_early_on_a_secret_that_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRISM_TEST_TOKEN", raising=False)
    path = write(tmp_path, FULL.replace("SECRET_FILE", str(tmp_path / "missing")))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == (
        "namespaces[2].credentials.api_token: environment variable PRISM_TEST_TOKEN is not set",
        f"namespaces[2].credentials.password: cannot read secret file {tmp_path / 'missing'}: "
        "No such file or directory",
    )


def test_config_defaults() -> None:
    config = parse_config({})
    assert (config.listen, config.tls, config.runtime_dir) == ("127.0.0.1:50051", None, None)
    assert (config.max_message_size, config.shutdown_grace) == (16 << 20, 10.0)
    assert config.plugin_security == PluginSecurityConfig(True, False, ())
    assert config.namespaces == ()
    plugin = parse_config(one_namespace()).namespaces[0].plugin
    assert plugin == PluginConfig("memstore")
    assert (plugin.mode, plugin.command, plugin.endpoint, plugin.tls) == (
        "in_process",
        None,
        None,
        None,
    )
    assert plugin.limits == LimitsConfig(None, None, None)
    assert (plugin.health_interval, plugin.startup_timeout, plugin.drain_grace) == (5, 15, 10)


def test_config_empty_file_is_the_defaults(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, ""))
    assert loaded.model_dump() == parse_config({}).model_dump()
    assert loaded.config_dir == tmp_path
    assert parse_config({}).config_dir is None


def test_config_relative_paths_are_relative_to_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "token").write_text("t0k\n")
    path = write(
        tmp_path / "etc",
        "runtime_dir: run\nsecrets: {directory: secrets}\nnamespaces:\n"
        "  - name: kv\n    plugin: {name: memstore}\n"
        "    credentials: {token: '{{ file:token }}'}\n",
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc") / path.name)
    assert config.config_dir == tmp_path / "etc"
    assert config.runtime_dir == tmp_path / "etc" / "run"
    assert config.secrets.directory == tmp_path / "etc" / "secrets"
    monkeypatch.chdir("/")
    assert config.resolve_credentials(config.namespace("kv")) == {"token": "t0k"}


def test_config_default_config_serves_kv_and_durable(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    assert [(n.name, n.plugin.name, n.plugin.mode) for n in config.namespaces] == [
        ("kv", "memstore", "in_process"),
        ("durable", "sqlite", "in_process"),
    ]
    assert config.namespace("durable").config == {"path": str(tmp_path / "durable.sqlite3")}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colour": "blue"}, r"^colour: unknown field$"),
        ({"listen": 5}, r"^listen: expected a string$"),
        ({"max_message_size": -1}, r"^max_message_size: expected a (non-negative|positive) int"),
        ({"max_message_size": True}, r"^max_message_size: expected a (non-negative|positive) int"),
        ({"shutdown_grace": 0}, r"^shutdown_grace: expected a positive number"),
        ({"tls": {"cert": "a"}}, r"^tls\.key: required$"),
        ({"plugin_security": {"require_signatures": "yes"}}, r"require_signatures: expected"),
        ({"plugin_security": {"trusted_keys": "k"}}, r"trusted_keys: expected a list"),
        ({"namespaces": {"kv": 1}}, r"^namespaces: expected a list$"),
        ({"namespaces": [{"plugin": {"name": "m"}}]}, r"^namespaces\[0\]\.name: required$"),
        ({"namespaces": [{"name": "KV!", "plugin": {"name": "m"}}]}, r"namespaces\[0\]\.name:"),
        ({"namespaces": [{"name": "kv"}]}, r"^namespaces\[0\]\.plugin: required$"),
        ({"namespaces": [{"name": "kv", "plugin": "memstore"}]}, r"plugin: expected a mapping"),
        (one_namespace(colour=1), r"^namespaces\[0\]\.plugin\.colour: unknown field$"),
        (one_namespace(mode="sideways"), r"^namespaces\[0\]\.plugin\.mode: 'sideways' is not"),
        (one_namespace(mode="remote"), r"^namespaces\[0\]\.plugin\.endpoint: required for a"),
        (one_namespace(mode="remote", endpoint="h:1"), r"^namespaces\[0\]\.plugin\.tls: a remote"),
        (one_namespace(command="python x"), r"plugin\.command: expected a list$"),
        (one_namespace(limits={"open_files": -1}), r"plugin\.limits\.open_files: expected"),
        (one_namespace(health_interval="5s"), r"plugin\.health_interval: expected a positive"),
        (one_namespace(drain_grace=-1), r"plugin\.drain_grace: expected a positive"),
    ],
)
def test_config_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_config_duplicate_namespace_is_an_error() -> None:
    raw = one_namespace()
    raw["namespaces"] *= 2
    with pytest.raises(ConfigError, match=r"^namespaces\[1\]\.name: 'kv' is already defined by"):
        parse_config(raw)


def test_config_reports_every_error_at_once() -> None:
    raw = {"listne": 1, "namespaces": [{"name": "KV", "plugin": {"name": "m", "mode": "x"}}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.errors == (
        "namespaces[0].name: 'KV' is not a valid namespace name (lowercase letters, digits, "
        "'-', '_', '.'; at most 63, starting with a letter or digit)",
        "namespaces[0].plugin.mode: 'x' is not one of in_process, sidecar, remote",
        "listne: unknown field",
    )
    assert str(info.value) == "\n".join(info.value.errors)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(tmp_path, "listen: [unclosed"))
    with pytest.raises(ConfigError, match=r"^config: expected a mapping$"):
        load_config(write(tmp_path, yaml.safe_dump(["a", "b"])))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"namespaces": ["kv"]}, r"^namespaces\[0\]: expected a mapping$"),
        ({"plugin_security": {"trusted_keys": [{"a": 1}]}}, r"trusted_keys\[0\]: expected a"),
        (one_namespace(limits={"open_files": 0}), r"plugin\.limits\.open_files: expected a pos"),
        ({"max_message_size": 0}, r"^max_message_size: expected a positive integer$"),
        ({"listen": "nowhere"}, r"^listen: 'nowhere' is not host:port$"),
        # Unknown fields inside nested sections are silently ignored today:
        ({"tls": {"cert": "a", "key": "b", "ca": "c"}}, r"^tls\.ca: unknown field$"),
        (one_namespace(limits={"files": 1}), r"plugin\.limits\.files: unknown field$"),
        (one_namespace(tls={"ca": "a", "pem": "b"}), r"plugin\.tls\.pem: unknown field$"),
        ({"plugin_security": {"verify": False}}, r"^plugin_security\.verify: unknown field$"),
    ],
)
def test_config_errors_name_the_field_for_malformed_entries(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_config_empty_sections_are_absent(tmp_path: Path) -> None:
    # `config:` or `credentials:` with every entry commented out is YAML's null.
    config = load_config(
        write(
            tmp_path,
            "tls:\nadmin:\n  enabled:\nnamespaces:\n  - name: kv\n"
            "    plugin: {name: memstore, limits: }\n    config:\n    credentials:\n",
        )
    )
    ns = config.namespace("kv")
    assert (config.tls, config.admin.enabled, ns.config, ns.credentials) == (None, True, {}, {})
    assert ns.plugin.limits == LimitsConfig()
    with pytest.raises(ConfigError, match=r"^namespaces\[0\]\.plugin: required$"):
        parse_config({"namespaces": [{"name": "kv", "plugin": None}]})
    # Where null means something, it is kept.
    assert parse_config({"secrets": {"env_prefix": None}}).secrets.env_prefix is None


def test_config_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    text = "namespaces:\n  - name: kv\n    plugin:\n      name: memstore\n      name: sqlite\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path} is not valid YAML (line 5, column 7): duplicate key 'name'"


def test_config_yaml_errors_are_one_line_without_the_offending_text(tmp_path: Path) -> None:
    path = write(tmp_path, "namespaces:\n  - name: kv\n    credentials: {pw: hunter2 {{ }\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.errors
    assert line.startswith(f"{path} is not valid YAML (line 3, column ")
    assert "hunter2" not in line
