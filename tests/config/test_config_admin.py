"""The ``admin`` section of the proxy config, and ``prism serve --admin``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prism.config import (
    DEFAULT_ADMIN_LISTEN,
    AdminConfig,
    ConfigError,
    admin_from_target,
    parse_config,
)


def admin_of(section: Any, base: Path = Path("/etc/prism")) -> AdminConfig:
    return parse_config({"admin": section}, base=base).admin


def test_admin_config_defaults_to_loopback_listener() -> None:
    assert parse_config({}).admin == AdminConfig(
        enabled=True, listen="127.0.0.1:50052", unix_socket=None
    )
    assert DEFAULT_ADMIN_LISTEN == "127.0.0.1:50052"


def test_admin_config_disabled() -> None:
    assert admin_of({"enabled": False}) == AdminConfig(enabled=False, listen=None)


def test_admin_config_unix_socket_alone_means_no_tcp_listener() -> None:
    assert admin_of({"unix_socket": "run/admin.sock"}) == AdminConfig(
        listen=None, unix_socket=Path("/etc/prism/run/admin.sock")
    )


def test_admin_config_unix_socket_and_listen_both_served() -> None:
    admin = admin_of({"unix_socket": "/run/prism/admin.sock", "listen": "[::1]:7000"})
    assert admin == AdminConfig(listen="[::1]:7000", unix_socket=Path("/run/prism/admin.sock"))


@pytest.mark.parametrize("listen", ["127.0.0.1:1", "127.9.9.9:50052", "[::1]:0", "localhost:80"])
def test_admin_config_accepts_loopback_addresses(listen: str) -> None:
    assert admin_of({"listen": listen}).listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:50052", "10.0.0.1:50052", "[::]:1", "admin.example:1"])
def test_admin_config_rejects_non_loopback_addresses(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen: .* not a loopback address"):
        admin_of({"listen": listen})


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:x", ":50052", "127.0.0.1:70000"])
def test_admin_config_rejects_malformed_addresses(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen: .* is not host:port"):
        admin_of({"listen": listen})


def test_admin_config_needs_a_listener_when_enabled() -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen: .*listen address or a unix_socket"):
        admin_of({"listen": ""})


def test_admin_config_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match=r"admin\.port: unknown field"):
        admin_of({"port": 50052})


def test_admin_config_tls_paths_are_relative_to_the_config_file() -> None:
    admin = admin_of({"tls": {"cert": "admin.pem", "key": "/keys/admin.key", "client_ca": "ca"}})
    assert admin.tls is not None
    assert (admin.tls.cert, admin.tls.key, admin.tls.client_ca) == (
        Path("/etc/prism/admin.pem"),
        Path("/keys/admin.key"),
        Path("/etc/prism/ca"),
    )
    assert admin_of({}).tls is None
    with pytest.raises(ConfigError, match=r"admin\.tls\.key: required"):
        admin_of({"tls": {"cert": "admin.pem"}})


def test_admin_config_rejects_wrong_types() -> None:
    with pytest.raises(ConfigError, match=r"admin\.enabled: expected true or false"):
        admin_of({"enabled": "no"})
    with pytest.raises(ConfigError, match=r"admin: expected a mapping"):
        admin_of(["127.0.0.1:1"])


def test_admin_config_rejects_socket_path_too_long_for_unix_sockets() -> None:
    with pytest.raises(ConfigError, match=r"admin\.unix_socket: .* too long"):
        admin_of({"unix_socket": "/run/" + "x" * 120})


def test_admin_from_target_forms() -> None:
    assert admin_from_target("127.0.0.1:9") == AdminConfig(listen="127.0.0.1:9")
    assert admin_from_target("unix:/run/a.sock") == AdminConfig(
        listen=None, unix_socket=Path("/run/a.sock")
    )
    assert admin_from_target("off") == AdminConfig(enabled=False, listen=None)
    with pytest.raises(ConfigError, match=r"--admin: .* not a loopback"):
        admin_from_target("0.0.0.0:50052")
    with pytest.raises(ConfigError, match=r"--admin: .* names no socket path"):
        admin_from_target("unix:")


def test_trusted_key_paths_are_relative_to_the_config_file() -> None:
    # What `prism plugin keygen` writes is referenced as a path; PEM text and base64 stay as is.
    b64 = "A" * 43 + "="
    pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
    keys = ["keys/release.key.pub", "/abs/k.pub", b64, pem]
    sec = parse_config({"plugin_security": {"trusted_keys": keys}}, base=Path("/etc/prism"))
    assert sec.plugin_security.trusted_keys == (
        "/etc/prism/keys/release.key.pub",
        "/abs/k.pub",
        b64,
        pem,
    )
