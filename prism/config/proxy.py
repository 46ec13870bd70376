"""The whole document: the proxy's listeners, limits, security, secrets and namespaces."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import PrivateAttr, field_validator, model_validator

from prism.config._model import ConfigError, FieldError, Model
from prism.config._types import Address, ConfigPath, PositiveInt, Seconds
from prism.config.admin import AdminConfig
from prism.config.audit import AuditConfig
from prism.config.auth import AuthConfig
from prism.config.fleet import FleetConfig
from prism.config.logs import LoggingConfig
from prism.config.metrics import MetricsConfig
from prism.config.namespace import NamespaceConfig
from prism.config.secrets import SecretsConfig, resolve_credentials
from prism.config.security import PluginSecurityConfig
from prism.config.tls import TlsConfig
from prism.config.tracing import TracingConfig

__all__ = ["ProxyConfig"]

# What the SDK writes in InitializeResponse.error for a config problem ("<STATUS>: config.path:
# required"), and the older "config field 'path' ..." that plugins not on the SDK still write.
_PLUGIN_CONFIG_ERROR = re.compile(r"(?:[A-Z_]+: )?(config[.\[:].*)\Z", re.DOTALL)
_PLUGIN_FIELD_ERROR = re.compile(r"(?:[A-Z_]+: )?config field '([^']+)':? (.*)\Z", re.DOTALL)


class ProxyConfig(Model):
    """The proxy's configuration (one YAML file)."""

    listen: Address = "127.0.0.1:50051"
    """host:port of the front door (the data API)."""
    tls: TlsConfig | None = None
    """Server TLS for the front door; none = plaintext h2."""
    admin: AdminConfig = AdminConfig()
    """The admin port's own listener: gRPC and HTTP (/metrics), loopback or a 0600 socket."""
    auth: AuthConfig = AuthConfig()
    """How callers are authenticated (client certificates, bearer tokens)."""
    audit: AuditConfig = AuditConfig()
    """The audit log: one record per call."""
    tracing: TracingConfig = TracingConfig()
    """W3C trace context and spans."""
    logging: LoggingConfig = LoggingConfig()
    """The proxy's own logs: format and level."""
    metrics: MetricsConfig = MetricsConfig()
    """An HTTP listener of its own for /metrics and /healthz (scrapers, probes); off by default."""
    max_message_size: PositiveInt = 16 << 20
    """Largest request or response message in bytes, on every hop (RESOURCE_EXHAUSTED beyond)."""
    shutdown_grace: Seconds = 10.0
    """Seconds in-flight calls may run after a stop signal."""
    runtime_dir: ConfigPath | None = None
    """Where sidecars' private socket directories are created (0700; created if missing).
    Default: the system's temporary directory."""
    plugin_security: PluginSecurityConfig = PluginSecurityConfig()
    """Checks on plugin files before they are loaded."""
    secrets: SecretsConfig = SecretsConfig()
    """Where {{ secret:NAME }} references in credentials are looked up."""
    fleet: FleetConfig = FleetConfig()
    """What the proxies of a fleet share: the Redis of fleet rate limits."""
    namespaces: tuple[NamespaceConfig, ...] = ()
    """The namespaces clients can address, each served by a plugin."""

    _config_dir: Path | None = PrivateAttr(default=None)

    @field_validator("namespaces")
    @classmethod
    def _unique(cls, namespaces: tuple[NamespaceConfig, ...]) -> tuple[NamespaceConfig, ...]:
        first: dict[str, int] = {}
        for i, ns in enumerate(namespaces):
            if ns.name in first:
                raise FieldError(
                    (i, "name"), f"{ns.name!r} is already defined by namespaces[{first[ns.name]}]"
                )
            first[ns.name] = i
        return namespaces

    @model_validator(mode="after")
    def _fleet_limits_have_redis(self) -> ProxyConfig:
        if self.fleet.redis is not None:
            return self
        for i, ns in enumerate(self.namespaces):
            limit = ns.traffic.rate_limit
            if limit is not None and limit.scope == "fleet":
                raise FieldError(
                    ("namespaces", i, "traffic", "rate_limit", "scope"),
                    "a fleet limit needs fleet.redis (the Redis the proxies share)",
                )
        return self

    @property
    def config_dir(self) -> Path | None:
        """The directory of the file this was read from (None when built in code): relative
        paths in plugins' config are relative to it, and plugins are told so in Initialize."""
        return self._config_dir

    def namespace(self, name: str) -> NamespaceConfig:
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        raise KeyError(name)

    def path_of(self, namespace: str) -> str:
        """Where ``namespace`` is in the file: ``namespaces[N]``."""
        for i, ns in enumerate(self.namespaces):
            if ns.name == namespace:
                return f"namespaces[{i}]"
        return f"namespace {namespace!r}"

    def resolve_credentials(self, ns: NamespaceConfig) -> dict[str, str]:
        """``ns``'s credentials with every secret reference read now, from this config's
        secret sources. Call it at each plugin instance start, so that a rotated secret (a
        file rewritten, a variable changed) is what the next instance gets. ConfigError, naming
        ``namespaces[N].credentials.KEY`` and the secret (never its value), when one cannot be
        read."""
        return resolve_credentials(
            ns.credentials, self.secrets, where=f"{self.path_of(ns.name)}.credentials"
        )

    def locate_plugin_error(self, namespace: str, error: str) -> str:
        """A plugin's Initialize error about its config (``INVALID_ARGUMENT: config.path:
        required``) as a path in this file (``namespaces[1].config.path: required``); any
        other error as it is."""
        where = self.path_of(namespace)
        field = _PLUGIN_FIELD_ERROR.match(error)
        if field is not None:
            return f"{where}.config.{field.group(1)}: {field.group(2)}"
        match = _PLUGIN_CONFIG_ERROR.match(error)
        if match is None:
            return error
        return f"{where}.{match.group(1)}"

    def fleet_redis_password(self) -> str | None:
        """``fleet.redis.password`` with its secret references read now (None without one).
        ConfigError naming ``fleet.redis.password`` and the secret, never its value."""
        redis = self.fleet.redis
        if redis is None or redis.password is None:
            return None
        resolved = resolve_credentials(
            {"password": redis.password}, self.secrets, where="fleet.redis"
        )
        return resolved["password"]

    def all_credentials(self) -> Mapping[str, dict[str, str]]:
        """Every namespace's resolved credentials (what loading checks once, to fail early,
        with ``fleet.redis.password``); one ConfigError with every problem."""
        resolved: dict[str, dict[str, str]] = {}
        errors: list[str] = []
        for ns in self.namespaces:
            try:
                resolved[ns.name] = self.resolve_credentials(ns)
            except ConfigError as exc:
                errors.extend(exc.errors)
        try:
            self.fleet_redis_password()
        except ConfigError as exc:
            errors.extend(exc.errors)
        if errors:
            raise ConfigError(*errors)
        return resolved
