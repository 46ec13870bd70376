"""The ``admin`` section: where the admin API listens, and ``prism serve --admin``."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from prism.config._model import ConfigError, FieldError, Model
from prism.config._types import ConfigPath, Flag, Text
from prism.config.tls import TlsConfig

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "AdminConfig",
    "admin_from_target",
    "check_admin_listen",
    "check_socket_path",
]

DEFAULT_ADMIN_LISTEN = "127.0.0.1:50052"


def _listen_problem(listen: str) -> str | None:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        return f"{listen!r} is not host:port"
    if host == "localhost":
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name could resolve anywhere
    if loopback:
        return None
    return (
        f"{listen!r} is not a loopback address; the admin API has no authentication, so it "
        "listens only on loopback (127.0.0.1, ::1, localhost) or on admin.unix_socket"
    )


def _socket_problem(path: Path) -> str | None:
    # sun_path holds 108 bytes with the terminating NUL; a longer path fails only at bind().
    if len(os.fsencode(path)) > 107:
        return f"{str(path)!r} is too long for a Unix socket (max 107 bytes)"
    return None


def check_admin_listen(listen: str, where: str = "admin.listen") -> None:
    """ConfigError unless ``listen`` is ``host:port`` with a loopback host."""
    problem = _listen_problem(listen)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def check_socket_path(path: Path, where: str) -> None:
    """ConfigError unless ``path`` fits in a Unix socket address."""
    problem = _socket_problem(path)
    if problem:
        raise ConfigError(f"{where}: {problem}")


class AdminConfig(Model):
    """Where the admin port listens: a loopback ``host:port`` and/or a Unix socket (mode 0600).
    Each serves the admin API over gRPC and HTTP/1.1 (``/metrics``, ``/healthz``) side by side.

    The admin API can reload plugins and has no authentication of its own, so it is never
    served on a non-loopback address: who can reach it must be decided by the host (loopback)
    or by file permissions (the socket).
    """

    enabled: Flag = True
    """Serve the admin API; false opens no admin listener."""
    listen: Text | None = DEFAULT_ADMIN_LISTEN
    """Loopback host:port for the admin port (gRPC and HTTP/1.1); empty or null = no TCP
    listener. Defaults to none when unix_socket is set."""
    unix_socket: ConfigPath | None = None
    """Unix socket for the admin port, created with mode 0600 (at most 107 bytes)."""
    tls: TlsConfig | None = None
    """TLS on the listen address (ALPN h2 and http/1.1); client_ca requires client
    certificates. The Unix socket stays plaintext (its mode decides who connects). None =
    plaintext."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # Naming only a socket means only the socket: no TCP listener the operator did not ask for.
        if "listen" not in data and data.get("unix_socket"):
            data["listen"] = None
        if data.get("enabled") is False:
            data["listen"] = data["unix_socket"] = None
        return data

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str | None) -> str | None:
        if not listen:
            return None
        problem = _listen_problem(listen)
        if problem:
            raise ValueError(problem)
        return listen

    @field_validator("unix_socket")
    @classmethod
    def _socket(cls, path: Path | None) -> Path | None:
        problem = None if path is None else _socket_problem(path)
        if problem:
            raise ValueError(problem)
        return path

    @model_validator(mode="after")
    def _some_listener(self) -> AdminConfig:
        if self.enabled and self.listen is None and self.unix_socket is None:
            raise FieldError(
                "listen",
                "the admin API needs a listen address or a unix_socket (or enabled: false)",
            )
        return self


def admin_from_target(target: str) -> AdminConfig:
    """``prism serve --admin``: ``host:port`` (loopback) or ``unix:/path``; ``off`` disables."""
    if target == "off":
        return AdminConfig(enabled=False, listen=None)
    if target.startswith("unix:"):
        path = target[len("unix:") :]
        if not path:
            raise ConfigError(f"--admin: {target!r} names no socket path")
        check_socket_path(Path(path), "--admin")
        return AdminConfig(listen=None, unix_socket=Path(path))
    check_admin_listen(target, "--admin")
    return AdminConfig(listen=target)
