"""The proxy's configuration: YAML → validated, frozen dataclasses.

Every error names the offending field by its path (``namespaces[1].plugin.mode``). Secrets are
written as references (``{{ env:NAME }}`` or ``{{ file:/path }}``) and resolved at load; their
values never appear in errors or logs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PluginMode = Literal["in_process", "sidecar", "remote"]
_MODES = ("in_process", "sidecar", "remote")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,62}\Z")
_B64_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")  # 32 raw bytes, base64
_SECRET = re.compile(r"\{\{\s*(env|file):([^}]+?)\s*\}\}")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS for the front door. ``client_ca`` turns on mTLS (client certs required)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class RemoteTlsConfig:
    """The proxy's side of an mTLS connection to a remote plugin."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_hostname: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None


@dataclass(frozen=True)
class PluginConfig:
    name: str  # entry point in "prism.plugins", or "package.module:Class"
    mode: PluginMode = "in_process"
    command: tuple[str, ...] | None = None  # sidecar: how to start it (default: prism's runner)
    endpoint: str | None = None  # remote: host:port
    tls: RemoteTlsConfig | None = None  # remote
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    health_interval: float = 5.0
    startup_timeout: float = 15.0
    drain_grace: float = 10.0


@dataclass(frozen=True)
class NamespaceConfig:
    name: str
    plugin: PluginConfig
    config: Mapping[str, Any] = field(default_factory=dict)
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PluginSecurityConfig:
    verify_permissions: bool = True
    require_signatures: bool = False
    trusted_keys: tuple[str, ...] = ()


DEFAULT_ADMIN_LISTEN = "127.0.0.1:50052"


@dataclass(frozen=True)
class AdminConfig:
    """Where the admin API listens: a loopback ``host:port`` and/or a Unix socket (mode 0600).

    The admin API can reload plugins and has no authentication of its own, so it is never
    served on a non-loopback address: who can reach it must be decided by the host (loopback)
    or by file permissions (the socket).
    """

    enabled: bool = True
    listen: str | None = DEFAULT_ADMIN_LISTEN
    unix_socket: Path | None = None


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = "127.0.0.1:50051"
    tls: TlsConfig | None = None
    admin: AdminConfig = field(default_factory=AdminConfig)
    max_message_size: int = 16 << 20
    shutdown_grace: float = 10.0
    runtime_dir: Path | None = None  # sidecar sockets; default: a private temp directory
    plugin_security: PluginSecurityConfig = field(default_factory=PluginSecurityConfig)
    namespaces: tuple[NamespaceConfig, ...] = ()

    def namespace(self, name: str) -> NamespaceConfig:
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        raise KeyError(name)


def default_config(data_dir: Path = Path("prism-data")) -> ProxyConfig:
    """The embedded default: ``kv`` on memstore and ``durable`` on sqlite, both in-process."""
    return ProxyConfig(
        namespaces=(
            NamespaceConfig("kv", PluginConfig("memstore")),
            NamespaceConfig(
                "durable",
                PluginConfig("sqlite"),
                config={"path": str(data_dir / "durable.sqlite3")},
            ),
        )
    )


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw or {}, base=Path(path).parent)


def parse_config(raw: Any, base: Path = Path()) -> ProxyConfig:
    r = _Reader(raw, "", base)
    namespaces = tuple(_namespace(n) for n in r.sections("namespaces"))
    names = [n.name for n in namespaces]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"namespaces: {name!r} is defined more than once")
    tls = r.optional("tls")
    sec = r.optional("plugin_security")
    admin = _admin(r.optional("admin"))
    cfg = ProxyConfig(
        listen=r.address("listen", "127.0.0.1:50051"),
        tls=TlsConfig(tls.path("cert"), tls.path("key"), tls.opt_path("client_ca"))
        if tls
        else None,
        admin=admin,
        max_message_size=r.positive("max_message_size", 16 << 20),
        shutdown_grace=r.seconds("shutdown_grace", 10.0),
        runtime_dir=r.opt_path("runtime_dir"),
        plugin_security=PluginSecurityConfig(
            verify_permissions=sec.flag("verify_permissions", True),
            require_signatures=sec.flag("require_signatures", False),
            trusted_keys=tuple(_trusted_key(k, base) for k in sec.strings("trusted_keys")),
        )
        if sec
        else PluginSecurityConfig(),
        namespaces=namespaces,
    )
    tls.done()
    sec.done()
    r.done()
    return cfg


def _trusted_key(key: str, base: Path) -> str:
    """A trusted key is PEM text, a base64 raw key, or a path; a relative path is relative to
    the config file, like every other path in it (not to the proxy's working directory)."""
    if "-----BEGIN" in key or _B64_KEY.fullmatch(key.strip()):
        return key
    return str(base / key)


def _admin(r: _Reader) -> AdminConfig:
    enabled = r.flag("enabled", True)
    socket = r.opt_path("unix_socket")
    # Naming only a socket means only the socket: no TCP listener the operator did not ask for.
    listen = r.text("listen", "" if socket else DEFAULT_ADMIN_LISTEN) or None
    r.done()
    if not enabled:
        return AdminConfig(enabled=False, listen=None, unix_socket=None)
    if listen is None and socket is None:
        raise ConfigError(
            f"{r.where('listen')}: the admin API needs a listen address or a unix_socket "
            "(or enabled: false)"
        )
    if listen is not None:
        check_admin_listen(listen, r.where("listen"))
    if socket is not None:
        check_socket_path(socket, r.where("unix_socket"))
    return AdminConfig(enabled=True, listen=listen, unix_socket=socket)


def check_socket_path(path: Path, where: str) -> None:
    # sun_path holds 108 bytes with the terminating NUL; a longer path fails only at bind().
    if len(os.fsencode(path)) > 107:
        raise ConfigError(f"{where}: {str(path)!r} is too long for a Unix socket (max 107 bytes)")


def check_admin_listen(listen: str, where: str = "admin.listen") -> None:
    """ConfigError unless ``listen`` is ``host:port`` with a loopback host."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ConfigError(f"{where}: {listen!r} is not host:port")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # a host name could resolve anywhere
        if not loopback:
            raise ConfigError(
                f"{where}: {listen!r} is not a loopback address; the admin API has no "
                "authentication, so it listens only on loopback (127.0.0.1, ::1, localhost) "
                "or on admin.unix_socket"
            )


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


def _namespace(r: _Reader) -> NamespaceConfig:
    name = r.text("name")
    if not _NAME.match(name):
        raise ConfigError(
            f"{r.where('name')}: {name!r} is not a valid namespace name "
            "(lowercase letters, digits, '-', '_', '.')"
        )
    p = r.section("plugin")
    mode = p.text("mode", "in_process")
    if mode not in _MODES:
        raise ConfigError(f"{p.where('mode')}: {mode!r} is not one of {', '.join(_MODES)}")
    command = p.items("command")
    endpoint = p.text("endpoint", "") or None
    if mode == "remote" and not endpoint:
        raise ConfigError(f"{p.where('endpoint')}: required for a remote plugin")
    rtls = p.optional("tls")
    lim = p.optional("limits")
    plugin = PluginConfig(
        name=p.text("name"),
        mode=mode,  # type: ignore[arg-type]
        command=tuple(str(c) for c in command) if command else None,
        endpoint=endpoint,
        tls=RemoteTlsConfig(
            rtls.path("ca"),
            rtls.opt_path("cert"),
            rtls.opt_path("key"),
            rtls.text("server_hostname", "") or None,
        )
        if rtls
        else None,
        limits=LimitsConfig(
            lim.opt_positive("memory_mb"),
            lim.opt_positive("cpu_seconds"),
            lim.opt_positive("open_files"),
        )
        if lim
        else LimitsConfig(),
        health_interval=p.seconds("health_interval", 5.0),
        startup_timeout=p.seconds("startup_timeout", 15.0),
        drain_grace=p.seconds("drain_grace", 10.0),
    )
    rtls.done()
    lim.done()
    p.done()
    if mode == "remote" and plugin.tls is None:
        raise ConfigError(f"{p.where('tls')}: a remote plugin needs mTLS settings (ca, cert, key)")
    config = r.mapping("config")
    credentials = {
        k: _resolve_secret(str(v), r.where(f"credentials.{k}"))
        for k, v in r.mapping("credentials").items()
    }
    r.done()
    return NamespaceConfig(name, plugin, config, credentials)


def _resolve_secret(value: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, ref = match.group(1), match.group(2).strip()
        if kind == "env":
            if ref not in os.environ:
                raise ConfigError(f"{where}: environment variable {ref} is not set")
            return os.environ[ref]
        try:
            return Path(ref).read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {ref}: {exc.strerror}") from None

    return _SECRET.sub(replace, value)


class _Reader:
    """Typed access to one mapping of the YAML document, tracking the path for errors and
    rejecting keys nobody read (a misspelt field is an error, not a silent default)."""

    def __init__(self, raw: Any, path: str, base: Path) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping")
        self.raw: dict[str, Any] = raw
        self.prefix = path
        self.base = base
        self.seen: set[str] = set()

    def __bool__(self) -> bool:
        return True

    def where(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.raw.get(key)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.where(unknown[0])}: unknown field")

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.where(key)}: required")
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.where(key)}: expected a string")
        return value

    def integer(self, key: str, default: int) -> int:
        value = self.opt_int(key)
        return default if value is None else value

    def positive(self, key: str, default: int) -> int:
        value = self.opt_positive(key)
        return default if value is None else value

    def opt_positive(self, key: str) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{self.where(key)}: expected a positive integer")
        return value

    def address(self, key: str, default: str) -> str:
        value = self.text(key, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{self.where(key)}: {value!r} is not host:port")
        return value

    def sections(self, key: str) -> list[_Reader]:
        items = self.items(key)
        for i, item in enumerate(items):
            if not isinstance(item, _Reader):
                raise ConfigError(f"{self.where(key)}[{i}]: expected a mapping")
        return items

    def strings(self, key: str) -> list[str]:
        items = self.items(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"{self.where(key)}[{i}]: expected a string")
        return items

    def opt_int(self, key: str) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{self.where(key)}: expected a non-negative integer")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{self.where(key)}: expected a positive number (seconds)")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)}: expected true or false")
        return value

    def path(self, key: str) -> Path:
        return self.base / self.text(key)

    def opt_path(self, key: str) -> Path | None:
        value = self.text(key, "")
        return self.base / value if value else None

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(key)}: expected a mapping")
        return value

    def items(self, key: str) -> list[Any]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self.where(key)}: expected a list")
        return [
            _Reader(item, f"{self.where(key)}[{i}]", self.base) if isinstance(item, dict) else item
            for i, item in enumerate(value)
        ]

    def section(self, key: str) -> _Reader:
        value = self._get(key)
        if value is None:
            raise ConfigError(f"{self.where(key)}: required")
        return _Reader(value, self.where(key), self.base)

    def optional(self, key: str) -> _Reader:
        value = self._get(key)
        if value is None:
            return _Empty(self.where(key), self.base)
        return _Reader(value, self.where(key), self.base)


class _Empty(_Reader):
    """A section that is absent: falsy, and every field takes its default."""

    def __init__(self, path: str, base: Path) -> None:
        super().__init__({}, path, base)

    def __bool__(self) -> bool:
        return False
