"""prism.config is a layer of its own: below hosting and proxy, importing neither."""

from __future__ import annotations

import subprocess
import sys

import prism.config

PUBLIC = [
    "ProxyConfig",
    "NamespaceConfig",
    "PluginConfig",
    "TlsConfig",
    "RemoteTlsConfig",
    "LimitsConfig",
    "AdminConfig",
    "PluginSecurityConfig",
    "SecretsConfig",
    "ConfigError",
    "load_config",
    "parse_config",
    "default_config",
    "admin_from_target",
    "check_admin_listen",
    "DEFAULT_ADMIN_LISTEN",
    "resolve_credentials",
    "json_schema",
]


def test_config_init_exports_what_hosting_proxy_and_cli_use() -> None:
    missing = [name for name in PUBLIC if not hasattr(prism.config, name)]
    assert missing == []
    assert set(PUBLIC) <= set(prism.config.__all__)


def test_config_init_imports_neither_hosting_nor_proxy() -> None:
    code = (
        "import sys, prism.config\n"
        "prism.config.load_config\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('prism.hosting', 'prism.proxy', "
        "'prism.sdk', 'prism.grpc', 'trio')))\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
