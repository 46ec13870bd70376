"""The launch handshake between the proxy and a sidecar plugin process, both sides.

The proxy starts a sidecar plugin with three environment variables:

``PRISM_PLUGIN_MAGIC_COOKIE``
    Always :data:`MAGIC_COOKIE`. It is not a secret and not a security measure: it lets a plugin
    notice it was started by hand and say so (:func:`check_magic_cookie`) instead of sitting
    silently on a socket nobody will connect to.
``PRISM_PLUGIN_PROTOCOL_VERSIONS``
    Comma-separated plugin protocol versions the proxy accepts, e.g. ``1``. The plugin picks one
    it implements (:func:`negotiate_protocol_version`).
``PRISM_PLUGIN_SOCKET``
    The Unix socket path the plugin must listen on, inside a private (0700) runtime directory
    the proxy created. Each launch gets a fresh path.
``PRISM_PLUGIN_MAX_MESSAGE_SIZE``
    The largest gRPC message, in bytes, the plugin must accept and may send: the proxy's
    ``max_message_size``, so a value the proxy takes from a client fits through every hop.
    Absent: :data:`DEFAULT_MAX_MESSAGE_SIZE`.

The plugin binds that socket with mode 0600, starts serving gRPC on it, and only then prints
exactly one handshake line on stdout (and flushes)::

    PRISM|<core protocol version>|<plugin protocol version>|unix|<socket path>|grpc
    PRISM|1|1|unix|/tmp/prism-memstore-k2j4/plugin-1.sock|grpc

- ``PRISM`` marks the line; stdout lines before it are ordinary log output.
- core protocol version: the version of this handshake itself, :data:`CORE_PROTOCOL_VERSION`.
- plugin protocol version: the ``BackendPlugin`` protocol version the plugin chose; it must be
  one the proxy offered.
- ``unix``: the network; only Unix sockets are supported for sidecars.
- socket path: where the plugin listens; the proxy checks it is inside its runtime directory,
  is a socket, is owned by the proxy's user and has mode 0600.
- ``grpc``: the RPC protocol spoken on the socket.

Every later stdout and stderr line is forwarded to the proxy's logging. The plugin must keep
stdin open and unread by anything else: the proxy holds the other end, so end-of-file on stdin
means the proxy is gone (:func:`watch_parent`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

import trio

CORE_PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

ENV_MAGIC_COOKIE = "PRISM_PLUGIN_MAGIC_COOKIE"
ENV_PROTOCOL_VERSIONS = "PRISM_PLUGIN_PROTOCOL_VERSIONS"
ENV_SOCKET = "PRISM_PLUGIN_SOCKET"
ENV_MAX_MESSAGE_SIZE = "PRISM_PLUGIN_MAX_MESSAGE_SIZE"
#: The lowest level the proxy logs a sidecar's records at (``DEBUG`` ... ``CRITICAL``): the
#: sidecar need not write lines the proxy would drop, nor hold back ones it would keep.
ENV_LOG_LEVEL = "PRISM_PLUGIN_LOG_LEVEL"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The proxy's default ``max_message_size`` (16 MiB), for both directions of every hop.
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
# Fixed and public on purpose (see the module docstring): a UX check, not authentication.
MAGIC_COOKIE = "7f3c1e9a5b2d4f60a8e4c2b1d9f07a36prism"

HANDSHAKE_PREFIX = "PRISM"
_FORMAT = "PRISM|<core version>|<plugin protocol version>|unix|<socket path>|grpc"
_NUMBER = re.compile(r"[0-9]{1,9}")

NOT_A_COMMAND_MESSAGE = (
    "This binary is a Prism plugin. It is not meant to be executed directly; the Prism proxy "
    "launches it as a sidecar process and talks to it over gRPC on a private Unix socket.\n"
    "To use it, reference it from a namespace's plugin configuration and start the proxy "
    "(`prism serve`).\n"
)


class PluginStartError(Exception):
    """A sidecar plugin could not be started; the message says what the proxy saw."""


class HandshakeError(PluginStartError):
    """The plugin's handshake line is malformed, incompatible or points at a bad socket."""


@dataclass(frozen=True)
class Handshake:
    core_version: int
    protocol_version: int
    network: str
    address: str
    protocol: str

    @property
    def socket_path(self) -> Path:
        return Path(self.address)


def is_handshake_line(line: str) -> bool:
    """Whether a stdout line claims to be the handshake (and so must parse as one)."""
    return line.startswith(HANDSHAKE_PREFIX + "|")


def parse_handshake(
    line: str, *, offered_versions: Collection[int] = SUPPORTED_PROTOCOL_VERSIONS
) -> Handshake:
    """Parse and check one handshake line; raise :class:`HandshakeError` naming the problem.

    Pure: it checks syntax and versions, not the socket (see :func:`check_plugin_socket`).
    """
    text = line.rstrip("\r\n")
    fields = text.split("|")
    if len(fields) != 6 or fields[0] != HANDSHAKE_PREFIX:
        raise HandshakeError(f"malformed plugin handshake {text!r}: expected {_FORMAT}")
    _, core, version, network, address, protocol = fields
    if not _NUMBER.fullmatch(core) or not _NUMBER.fullmatch(version):
        raise HandshakeError(
            f"malformed plugin handshake {text!r}: versions must be decimal integers "
            f"(expected {_FORMAT})"
        )
    if int(core) != CORE_PROTOCOL_VERSION:
        raise HandshakeError(
            f"plugin handshake uses core protocol version {int(core)}, but this proxy speaks "
            f"core protocol version {CORE_PROTOCOL_VERSION}"
        )
    if int(version) not in offered_versions:
        offered = ",".join(str(v) for v in sorted(offered_versions))
        raise HandshakeError(
            f"plugin chose plugin protocol version {int(version)}, but the proxy offered "
            f"only {offered}"
        )
    if network != "unix":
        raise HandshakeError(f"plugin handshake network {network!r} is not supported (only unix)")
    if not address.startswith("/"):
        raise HandshakeError(f"plugin handshake socket path {address!r} is not absolute")
    if protocol != "grpc":
        raise HandshakeError(f"plugin handshake protocol {protocol!r} is not supported (only grpc)")
    return Handshake(int(core), int(version), network, address, protocol)


def check_plugin_socket(path: Path, runtime_dir: Path) -> None:
    """Refuse a handshake socket outside ``runtime_dir``, not a socket, foreign, or not 0600."""
    runtime = Path(os.path.realpath(runtime_dir))
    if not Path(os.path.realpath(path.parent)).is_relative_to(runtime):
        raise HandshakeError(f"socket {path} is outside the runtime directory {runtime_dir}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise HandshakeError(
            f"socket {path} does not exist: a plugin must listen before printing its handshake"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise HandshakeError(f"{path} is not a Unix socket")
    if st.st_uid != os.geteuid():
        raise HandshakeError(f"socket {path} is owned by uid {st.st_uid}, not {os.geteuid()}")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        raise HandshakeError(f"socket {path} has mode {mode:04o}; it must be 0600")


def handshake_line(socket_path: str | os.PathLike[str], protocol_version: int) -> str:
    """The line a plugin prints (without the newline) once it listens on ``socket_path``."""
    address = os.fspath(socket_path)
    if "|" in address or "\n" in address or "\r" in address:
        raise ValueError(f"socket path {address!r} cannot be sent in a handshake line")
    return f"{HANDSHAKE_PREFIX}|{CORE_PROTOCOL_VERSION}|{protocol_version}|unix|{address}|grpc"


def format_protocol_versions(versions: Iterable[int]) -> str:
    """The ``PRISM_PLUGIN_PROTOCOL_VERSIONS`` value for the versions the proxy accepts."""
    return ",".join(str(v) for v in versions)


# --- plugin side: what the SDK's serve() calls -----------------------------------------------


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def check_magic_cookie(
    environ: Mapping[str, str] | None = None, *, stderr: TextIO | None = None
) -> None:
    """Exit with status 1 and an explanation when not launched by the proxy.

    Call first thing in a plugin's entry point, before binding sockets or reading config.
    """
    if _environ(environ).get(ENV_MAGIC_COOKIE) != MAGIC_COOKIE:
        _exit_with(NOT_A_COMMAND_MESSAGE, stderr)


def plugin_socket_path(
    environ: Mapping[str, str] | None = None, *, stderr: TextIO | None = None
) -> Path:
    """The socket path the proxy told this plugin to listen on; exit(1) if there is none."""
    value = _environ(environ).get(ENV_SOCKET)
    if not value:
        _exit_with(f"{ENV_SOCKET} is not set: the Prism proxy must launch this plugin.\n", stderr)
    return Path(value)


def plugin_max_message_size(environ: Mapping[str, str] | None = None) -> int:
    """The message size limit the proxy asked for (``PRISM_PLUGIN_MAX_MESSAGE_SIZE``), else the
    default; a value that is not a positive integer is ignored (the default applies)."""
    value = _environ(environ).get(ENV_MAX_MESSAGE_SIZE, "").strip()
    if value.isdigit() and len(value) <= 10 and int(value) > 0:
        return int(value)
    return DEFAULT_MAX_MESSAGE_SIZE


def log_level_name(level: int) -> str:
    """The standard level name at or below ``level`` (what :data:`ENV_LOG_LEVEL` carries)."""
    for name in reversed(_LOG_LEVELS):
        if level >= logging.getLevelName(name):
            return name
    return "DEBUG"


def plugin_log_level(environ: Mapping[str, str] | None = None) -> str:
    """The level the proxy asked a sidecar to log from (``PRISM_PLUGIN_LOG_LEVEL``), lower
    case; ``info`` when it asked none or named no standard level."""
    value = _environ(environ).get(ENV_LOG_LEVEL, "").strip().upper()
    return value.lower() if value in _LOG_LEVELS else "info"


def offered_protocol_versions(environ: Mapping[str, str] | None = None) -> tuple[int, ...]:
    """The plugin protocol versions the proxy offered (empty if it offered none)."""
    parts = (v.strip() for v in _environ(environ).get(ENV_PROTOCOL_VERSIONS, "").split(","))
    return tuple(int(v) for v in parts if _NUMBER.fullmatch(v))


def negotiate_protocol_version(
    supported: Iterable[int],
    environ: Mapping[str, str] | None = None,
    *,
    stderr: TextIO | None = None,
) -> int:
    """The highest protocol version both sides support; exit(1) explaining if there is none."""
    offered = offered_protocol_versions(environ)
    supported = tuple(supported)
    common = set(offered) & set(supported)
    if not common:
        _exit_with(
            "This Prism plugin implements plugin protocol versions "
            f"{format_protocol_versions(sorted(supported))}, but the proxy offered "
            f"{format_protocol_versions(offered) or 'none'}: upgrade the older of the two.\n",
            stderr,
        )
    return max(common)


def _exit_with(message: str, stderr: TextIO | None = None) -> NoReturn:
    stream = sys.stderr if stderr is None else stderr
    stream.write(message)
    stream.flush()
    raise SystemExit(1)


async def watch_parent(fd: int = 0) -> None:
    """Return when the proxy that launched this plugin is gone.

    The proxy keeps the write end of the plugin's stdin pipe open for the plugin's whole life,
    so end-of-file on stdin means the proxy closed it (orderly stop) or died (the kernel closes
    a dead process's descriptors, even after SIGKILL). We watch stdin rather than poll
    ``os.getppid()`` because it is immediate rather than 0.5 s late, costs no wake-ups, needs no
    snapshot of the parent pid (which races with a parent that dies before we look), survives
    wrapper scripts between the proxy and the plugin, and works where PR_SET_PDEATHSIG does not
    exist (macOS). Anything read is discarded: the proxy never writes to stdin.

    Cancellation: stops watching and returns nothing; stdin is left open.
    """
    # A duplicate, so closing our stream never closes the plugin's fd 0.
    stream = trio.lowlevel.FdStream(os.dup(fd))
    async with stream:
        while await stream.receive_some(4096):
            pass
