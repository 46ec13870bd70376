"""A namespace's ``plugin`` section: which plugin, deployed how, with what limits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from prism.config._model import FieldError, Model
from prism.config._types import Address, PositiveInt, Seconds, Text
from prism.config.tls import RemoteTlsConfig

__all__ = ["LimitsConfig", "OutlierConfig", "PluginConfig", "PluginMode"]

PluginMode = Literal["in_process", "sidecar", "remote"]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class LimitsConfig(Model):
    """Resource limits of a sidecar process (setrlimit in the child before it runs the plugin)."""

    memory_mb: PositiveInt | None = None
    """Address-space limit in MiB (RLIMIT_AS)."""
    cpu_seconds: PositiveInt | None = None
    """CPU time limit in seconds (RLIMIT_CPU)."""
    open_files: PositiveInt | None = None
    """Open file limit (RLIMIT_NOFILE)."""


class OutlierConfig(Model):
    """Outlier ejection among a remote plugin's ``endpoints`` (Envoy's consecutive-failure
    detection): an endpoint that fails ``consecutive_failures`` calls or connection attempts in
    a row is taken out of balancing for a while, longer each time."""

    consecutive_failures: PositiveInt = 5
    """Failures in a row (UNAVAILABLE, DEADLINE_EXCEEDED, a connection that fails or is lost)
    that eject an endpoint. Any other answer from the plugin is a success and resets the count."""
    base_ejection_time: Seconds = 30.0
    """An ejection lasts this times the number of times the endpoint has been ejected."""
    max_ejection_time: Seconds = 300.0
    """The longest an ejection lasts (``base_ejection_time`` when that is longer)."""
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 50
    """At most this share of the endpoints is ejected at once (rounded down, and never all of
    them: one endpoint always stays in balancing); 0 turns ejection off."""
    interval: Seconds = 10.0
    """Every such period an endpoint serves without being ejected, the count of its past
    ejections (the multiplier of ``base_ejection_time``) goes down by one."""


def _env_name(name: Any) -> Any:
    if isinstance(name, str) and not _ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name")
    if isinstance(name, str) and name.startswith("PRISM_PLUGIN_"):
        raise ValueError(f"{name} is set by the proxy itself (the plugin handshake)")
    return name


EnvName = Annotated[Text, BeforeValidator(_env_name)]


class PluginConfig(Model):
    """Which plugin serves a namespace and how it is deployed."""

    name: Text
    """Entry point in the group prism.plugins (memstore, sqlite), or package.module:Class."""
    mode: PluginMode = "in_process"
    """Deployment model: in the proxy, a child process on a Unix socket, or a service over mTLS."""
    command: tuple[Text, ...] | None = None
    """Sidecar: the command that starts it (default: python -m prism.hosting.launcher NAME)."""
    endpoint: Address | None = None
    """Remote: the plugin service's host:port (this or ``endpoints`` is required for remote)."""
    tls: RemoteTlsConfig | None = None
    """Remote: the proxy's side of mTLS (required for remote)."""
    limits: LimitsConfig = LimitsConfig()
    """Sidecar: resource limits of the process."""
    env: Mapping[EnvName, Text] = {}
    """Sidecar: variables set in its environment (besides the minimal environment it starts
    with). Not for secrets: credentials travel in the namespace's credentials."""
    inherit_env: tuple[EnvName, ...] = ()
    """Sidecar: names of the proxy's environment variables passed through to it."""
    health_interval: Seconds = 5.0
    """Seconds between health checks (and metrics polls) of the plugin."""
    startup_timeout: Seconds = 15.0
    """Seconds a start (launch, Initialize, first health check) may take."""
    drain_grace: Seconds = 10.0
    """Seconds the old instance's calls may run on reload (and on stop) before they are
    cancelled."""
    endpoints: tuple[Address, ...] = ()
    """Remote: several instances of the plugin service (host:port each), balanced: power of two
    choices on the fewest calls in flight, with outlier ejection. Instead of ``endpoint``."""
    outlier_detection: OutlierConfig = OutlierConfig()
    """Remote with several ``endpoints``: when a failing endpoint is ejected from balancing."""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be empty")
        return name

    @field_validator("command")
    @classmethod
    def _command(cls, command: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if command is not None and not command:
            raise ValueError("must not be empty (leave it out for prism's runner)")
        return command

    @field_validator("env")
    @classmethod
    def _env(cls, env: Mapping[str, str]) -> Mapping[str, str]:
        for key, value in env.items():
            if "{{" in value:
                raise FieldError(
                    key,
                    "secret references are not allowed in env: credentials travel in the "
                    "namespace's credentials (sent in Initialize, never in an environment)",
                )
        return env

    @property
    def addresses(self) -> tuple[str, ...]:
        """A remote plugin's endpoints: ``endpoints``, or the one ``endpoint``."""
        if self.endpoints:
            return self.endpoints
        return () if self.endpoint is None else (self.endpoint,)

    @model_validator(mode="after")
    def _mode_needs(self) -> PluginConfig:
        if self.mode == "remote":
            if self.endpoint is None and not self.endpoints:
                raise FieldError("endpoint", "required for a remote plugin")
            if self.endpoint is not None and self.endpoints:
                raise FieldError("endpoints", "give either endpoint or endpoints, not both")
            if len(set(self.endpoints)) != len(self.endpoints):
                raise FieldError("endpoints", "lists an endpoint more than once")
            if self.tls is None:
                raise FieldError("tls", "a remote plugin needs mTLS settings (ca, cert, key)")
        else:
            for field in ("endpoints", "outlier_detection"):
                if field in self.model_fields_set:
                    raise FieldError(field, f"only a remote plugin has endpoints ({self.mode})")
        if self.mode != "sidecar":
            for field in ("env", "inherit_env"):
                if getattr(self, field):
                    raise FieldError(
                        field,
                        f"only a sidecar has an environment of its own (mode is {self.mode})",
                    )
        return self
