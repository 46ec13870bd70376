"""A namespace's ``plugin`` section: which plugin, deployed how, with what limits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, field_validator, model_validator

from prism.config._model import FieldError, Model
from prism.config._types import Address, PositiveInt, Seconds, Text
from prism.config.tls import RemoteTlsConfig

__all__ = ["LimitsConfig", "PluginConfig", "PluginMode"]

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
    """Remote: the plugin service's host:port (required for remote)."""
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

    @model_validator(mode="after")
    def _mode_needs(self) -> PluginConfig:
        if self.mode == "remote":
            if self.endpoint is None:
                raise FieldError("endpoint", "required for a remote plugin")
            if self.tls is None:
                raise FieldError("tls", "a remote plugin needs mTLS settings (ca, cert, key)")
        if self.mode != "sidecar":
            for field in ("env", "inherit_env"):
                if getattr(self, field):
                    raise FieldError(
                        field,
                        f"only a sidecar has an environment of its own (mode is {self.mode})",
                    )
        return self
