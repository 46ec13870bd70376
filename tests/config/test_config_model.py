"""The base of every section (prism/config/_model.py): errors as field paths, one message per kind
of mistake, frozen sections, construction in code, ``replace``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from prism.config import (
    AdminConfig,
    ConfigError,
    LimitsConfig,
    NamespaceConfig,
    PluginConfig,
    ProxyConfig,
    TlsConfig,
    parse_config,
)


def ns(**plugin: Any) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in plugin.items())
    return f"namespaces:\n  - name: kv\n    plugin: {{name: memstore, {fields}}}\n"


def errors(document: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_load(document))
    return info.value.errors


@pytest.mark.parametrize(
    ("document", "error"),
    [
        # missing
        ("namespaces: [{name: kv}]", "namespaces[0].plugin: required"),
        # unknown field, at any depth
        ("admin: {listen: '127.0.0.1:1', port: 1}", "admin.port: unknown field"),
        # wrong scalar types: no coercion of YAML's yes, "10" or 1.5
        ("listen: 5", "listen: expected a string"),
        ("admin: {enabled: 1}", "admin.enabled: expected true or false"),
        ("admin: {enabled: 'true'}", "admin.enabled: expected true or false"),
        ("max_message_size: '10'", "max_message_size: expected a positive integer"),
        ("max_message_size: 1.5", "max_message_size: expected a positive integer"),
        ("max_message_size: true", "max_message_size: expected a positive integer"),
        ("max_message_size: 0", "max_message_size: expected a positive integer"),
        ("shutdown_grace: 5s", "shutdown_grace: expected a positive number (seconds)"),
        ("shutdown_grace: -1", "shutdown_grace: expected a positive number (seconds)"),
        ("shutdown_grace: true", "shutdown_grace: expected a positive number (seconds)"),
        ("tls: {cert: 5, key: k}", "tls.cert: expected a path (a non-empty string)"),
        ("tls: {cert: '', key: k}", "tls.cert: expected a path (a non-empty string)"),
        # wrong structure
        ("tls: certs/proxy.pem", "tls: expected a mapping"),
        ("namespaces: {kv: 1}", "namespaces: expected a list"),
        ("namespaces: [kv]", "namespaces[0]: expected a mapping"),
        ("plugin_security: {trusted_keys: k}", "plugin_security.trusted_keys: expected a list"),
        ("plugin_security: {trusted_keys: [{a: 1}]}", "plugin_security.trusted_keys[0]: expected"),
        # one of a fixed set
        (ns(mode="sideways"), "namespaces[0].plugin.mode: 'sideways' is not one of in_process"),
        # a section's own checks, on a field or across fields
        ("listen: nowhere", "listen: 'nowhere' is not host:port"),
        (ns(mode="remote"), "namespaces[0].plugin.endpoint: required for a remote plugin"),
        # mapping keys that are not strings
        (
            "namespaces: [{name: kv, plugin: {name: m}, config: {1: x}}]",
            "namespaces[0].config.1: field names must be strings",
        ),
    ],
)
def test_model_each_kind_of_error_names_its_field(document: str, error: str) -> None:
    found = errors(document)
    assert len(found) == 1
    assert found[0].startswith(error)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ("shutdown_grace: .nan", "shutdown_grace"),
        ("shutdown_grace: .inf", "shutdown_grace"),
        (ns(health_interval=".nan"), "namespaces[0].plugin.health_interval"),
        (ns(health_interval="-.inf"), "namespaces[0].plugin.health_interval"),
        (ns(startup_timeout=".inf"), "namespaces[0].plugin.startup_timeout"),
        (ns(drain_grace=".nan"), "namespaces[0].plugin.drain_grace"),
        ("max_message_size: .inf", "max_message_size"),
        (ns(limits="{memory_mb: .nan}"), "namespaces[0].plugin.limits.memory_mb"),
        (
            "namespaces: [{name: kv, plugin: {name: m}, config: {ratio: .nan}}]",
            "namespaces[0].config.ratio",
        ),
        (
            "namespaces: [{name: kv, plugin: {name: m}, config: {a: {b: [1, .inf]}}}]",
            "namespaces[0].config.a.b[1]",
        ),
    ],
)
def test_model_nan_and_infinity_are_rejected_everywhere(document: str, path: str) -> None:
    (error,) = errors(document)
    assert error.startswith(f"{path}: expected a ")
    assert "NaN" in error or "integer" in error


def test_model_nan_built_in_code_is_rejected_too() -> None:
    # Once accepted, health_interval: nan crashed the health loop in a restart cycle.
    with pytest.raises(ConfigError, match=r"^health_interval: .*not NaN or infinity"):
        PluginConfig("memstore", health_interval=float("nan"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-01-01", "a YAML date cannot be passed to a plugin"),
        ("9007199254740993", "integer too large to pass exactly"),
    ],
)
def test_model_plugin_config_must_fit_a_struct(value: str, message: str) -> None:
    (error,) = errors(f"namespaces: [{{name: kv, plugin: {{name: m}}, config: {{x: {value}}}}}]")
    assert error.startswith(f"namespaces[0].config.x: {message}")


def test_model_errors_never_quote_a_value_that_could_be_a_secret() -> None:
    secret = "hunter2-do-not-print"
    found = errors(
        "namespaces: [{name: kv, plugin: {name: m}, "
        f"credentials: {{password: [{secret}], pin: 12345}}}}]"
    )
    assert found == (
        "namespaces[0].credentials.password: expected a string",
        "namespaces[0].credentials.pin: expected a string",
    )
    (found,) = errors(
        "namespaces: [{name: kv, plugin: {name: m}, "
        f"credentials: {{other: '{{{{ {secret} }}}} {secret}'}}}}]"
    )
    assert found == (
        "namespaces[0].credentials.other: a '{{ ... }}' that is not a secret reference "
        "({{ env:NAME }}, {{ file:PATH }} or {{ secret:NAME }})"
    )


def test_model_sections_are_frozen() -> None:
    config = parse_config({})
    with pytest.raises(ValidationError, match="frozen"):
        config.listen = "0.0.0.0:1"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.admin.enabled = False  # type: ignore[misc]


def test_model_built_in_code_positionally_or_by_keyword() -> None:
    by_position = NamespaceConfig("kv", PluginConfig("memstore", "sidecar"), {"max_keys": 1})
    by_keyword = NamespaceConfig(
        name="kv", plugin=PluginConfig(name="memstore", mode="sidecar"), config={"max_keys": 1}
    )
    assert by_position == by_keyword
    assert LimitsConfig(1, 2, 3) == LimitsConfig(memory_mb=1, cpu_seconds=2, open_files=3)
    with pytest.raises(TypeError, match="given twice"):
        PluginConfig("memstore", name="sqlite")
    with pytest.raises(TypeError, match="at most"):
        LimitsConfig(1, 2, 3, 4)


def test_model_built_in_code_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^admin\.listen: '0\.0\.0\.0:1' is not a loopback"):
        ProxyConfig(admin={"listen": "0.0.0.0:1"})
    with pytest.raises(ConfigError, match=r"^listen: .* is not a loopback"):
        AdminConfig(listen="0.0.0.0:1")


def test_model_validation_context_reaches_nested_sections() -> None:
    # pydantic validates through a custom __init__ unless it is marked as its own; then the
    # context (the config file's directory) would not reach nested sections' paths.
    assert ProxyConfig.__pydantic_custom_init__ is False
    config = parse_config({"tls": {"cert": "a.pem", "key": "/k.pem"}}, base=Path("/etc/p"))
    assert config.tls == TlsConfig(Path("/etc/p/a.pem"), Path("/k.pem"))


def test_model_replace_validates_and_keeps_where_the_file_was(tmp_path: Path) -> None:
    config = parse_config({"listen": "127.0.0.1:1"}, base=tmp_path)
    moved = config.replace(listen="127.0.0.1:2")
    assert (moved.listen, moved.config_dir, config.listen) == (
        "127.0.0.1:2",
        tmp_path,
        "127.0.0.1:1",
    )
    with pytest.raises(ConfigError, match=r"^listen: 'nowhere' is not host:port$"):
        config.replace(listen="nowhere")
