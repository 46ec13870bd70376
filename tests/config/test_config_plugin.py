"""A namespace's ``plugin`` section (prism/config/plugin.py): the sidecar's environment fields,
and what each deployment model requires."""

from __future__ import annotations

from typing import Any

import pytest

from prism.config import ConfigError, PluginConfig, parse_config


def plugin(**fields: Any) -> PluginConfig:
    raw = {"namespaces": [{"name": "kv", "plugin": {"name": "memstore", **fields}}]}
    return parse_config(raw).namespaces[0].plugin


def plugin_error(**fields: Any) -> str:
    with pytest.raises(ConfigError) as info:
        plugin(**fields)
    (line,) = info.value.errors
    return line


def test_plugin_env_and_inherit_env_for_a_sidecar() -> None:
    found = plugin(
        mode="sidecar",
        env={"LOG_FORMAT": "json", "HTTPS_PROXY": "http://proxy.internal:3128"},
        inherit_env=["KRB5CCNAME", "SSL_CERT_FILE"],
    )
    assert found.env == {"LOG_FORMAT": "json", "HTTPS_PROXY": "http://proxy.internal:3128"}
    assert found.inherit_env == ("KRB5CCNAME", "SSL_CERT_FILE")


def test_plugin_env_defaults_to_nothing_extra() -> None:
    found = plugin(mode="sidecar")
    assert (found.env, found.inherit_env) == ({}, ())


@pytest.mark.parametrize(
    "value", ["{{ env:PG_PASSWORD }}", "{{ secret:pg }}", "x{{ file:/run/pw }}", "{{ vault:x }}"]
)
def test_plugin_env_refuses_secret_references(value: str) -> None:
    assert plugin_error(mode="sidecar", env={"PGPASSWORD": value}) == (
        "namespaces[0].plugin.env.PGPASSWORD: secret references are not allowed in env: "
        "credentials travel in the namespace's credentials (sent in Initialize, never in an "
        "environment)"
    )


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"env": {"NOT-A-NAME": "x"}}, "plugin.env.NOT-A-NAME: 'NOT-A-NAME' is not an environment"),
        ({"env": {"N": 5}}, "plugin.env.N: expected a string"),
        ({"env": ["A=1"]}, "plugin.env: expected a mapping"),
        ({"inherit_env": "HOME"}, "plugin.inherit_env: expected a list"),
        ({"inherit_env": ["1X"]}, "plugin.inherit_env[0]: '1X' is not an environment variable"),
    ],
)
def test_plugin_env_malformed(fields: dict[str, Any], error: str) -> None:
    assert plugin_error(mode="sidecar", **fields).startswith(f"namespaces[0].{error}")


@pytest.mark.parametrize("mode", ["in_process", "remote"])
@pytest.mark.parametrize(("field", "value"), [("env", {"A": "1"}), ("inherit_env", ["A"])])
def test_plugin_env_only_for_a_sidecar(mode: str, field: str, value: Any) -> None:
    remote = {"endpoint": "h:1", "tls": {"ca": "ca.pem"}} if mode == "remote" else {}
    assert plugin_error(mode=mode, **remote, **{field: value}) == (
        f"namespaces[0].plugin.{field}: only a sidecar has an environment of its own "
        f"(mode is {mode})"
    )


def test_plugin_remote_needs_endpoint_and_tls() -> None:
    assert plugin_error(mode="remote") == (
        "namespaces[0].plugin.endpoint: required for a remote plugin"
    )
    assert plugin_error(mode="remote", endpoint="h:1") == (
        "namespaces[0].plugin.tls: a remote plugin needs mTLS settings (ca, cert, key)"
    )
    assert plugin_error(mode="remote", endpoint="h", tls={"ca": "c"}) == (
        "namespaces[0].plugin.endpoint: 'h' is not host:port"
    )
    assert plugin_error(mode="remote", endpoint="h:1", tls={"ca": "c", "key": "k"}) == (
        "namespaces[0].plugin.tls.key: a client key without a client certificate (cert)"
    )


def test_plugin_name_and_command_must_not_be_empty() -> None:
    assert plugin_error(name="") == "namespaces[0].plugin.name: must not be empty"
    assert plugin_error(mode="sidecar", command=[]) == (
        "namespaces[0].plugin.command: must not be empty (leave it out for prism's runner)"
    )


TLS = {"ca": "ca.pem"}


def test_plugin_remote_endpoints_instead_of_endpoint() -> None:
    found = plugin(mode="remote", endpoints=["a:1", "b:2"], tls=TLS)
    assert (found.endpoint, found.endpoints, found.addresses) == (
        None,
        ("a:1", "b:2"),
        ("a:1", "b:2"),
    )
    assert plugin(mode="remote", endpoint="a:1", tls=TLS).addresses == ("a:1",)
    detection = found.outlier_detection
    assert (detection.consecutive_failures, detection.max_ejection_percent) == (5, 50)
    assert (detection.base_ejection_time, detection.max_ejection_time) == (30.0, 300.0)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"endpoint": "a:1", "endpoints": ["b:2"]},
            "endpoints: give either endpoint or endpoints, not both",
        ),
        ({"endpoints": ["a:1", "a:1"]}, "endpoints: lists an endpoint more than once"),
        ({"endpoints": ["a"]}, "endpoints[0]: 'a' is not host:port"),
        (
            {"endpoints": ["a:1"], "outlier_detection": {"max_ejection_percent": 101}},
            "outlier_detection.max_ejection_percent:",
        ),
        (
            {"endpoints": ["a:1"], "outlier_detection": {"consecutive_failures": 0}},
            "outlier_detection.consecutive_failures:",
        ),
    ],
)
def test_plugin_remote_endpoints_malformed(fields: dict[str, Any], error: str) -> None:
    assert plugin_error(mode="remote", tls=TLS, **fields).startswith(
        f"namespaces[0].plugin.{error}"
    )


@pytest.mark.parametrize("field", ["endpoints", "outlier_detection"])
def test_plugin_endpoints_only_for_a_remote(field: str) -> None:
    value: Any = ["a:1"] if field == "endpoints" else {"consecutive_failures": 3}
    assert plugin_error(mode="sidecar", **{field: value}) == (
        f"namespaces[0].plugin.{field}: only a remote plugin has endpoints (sidecar)"
    )
