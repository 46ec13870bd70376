"""The proxy's configuration: YAML → validated, frozen pydantic models.

This layer sits below ``prism.hosting`` and ``prism.proxy`` and imports neither. Every error
names its field by path (``namespaces[1].plugin.mode: ...``); unknown fields are errors; NaN
and infinities are rejected. Credentials keep their secret references (``{{ env:NAME }}``,
``{{ file:PATH }}``, ``{{ secret:NAME }}``) unresolved: :meth:`ProxyConfig.resolve_credentials`
reads them at each plugin instance start, and their values never appear in errors or logs.

One module per section (``admin``, ``tls``, ``plugin``, ``namespace``, ``security``,
``secrets``, ``proxy``); a new section is a new small module and a field of ``ProxyConfig``.
"""

from __future__ import annotations

from prism.config._model import ConfigError
from prism.config.admin import (
    DEFAULT_ADMIN_LISTEN,
    AdminConfig,
    admin_from_target,
    check_admin_listen,
    check_socket_path,
)
from prism.config.load import default_config, json_schema, load_config, parse_config
from prism.config.namespace import NamespaceConfig
from prism.config.plugin import LimitsConfig, OutlierConfig, PluginConfig, PluginMode
from prism.config.proxy import ProxyConfig
from prism.config.secrets import SecretsConfig, resolve_credentials
from prism.config.security import PluginSecurityConfig
from prism.config.tls import RemoteTlsConfig, TlsConfig

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "AdminConfig",
    "ConfigError",
    "LimitsConfig",
    "NamespaceConfig",
    "OutlierConfig",
    "PluginConfig",
    "PluginMode",
    "PluginSecurityConfig",
    "ProxyConfig",
    "RemoteTlsConfig",
    "SecretsConfig",
    "TlsConfig",
    "admin_from_target",
    "check_admin_listen",
    "check_socket_path",
    "default_config",
    "json_schema",
    "load_config",
    "parse_config",
    "resolve_credentials",
]
