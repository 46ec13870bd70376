"""The plugin's side of Prism's sidecar launch handshake, on asyncio and the standard library.

Written from the protocol's description (``prism/plugin_protocol/handshake.py`` documents it),
not imported from Prism, because that is the point of this plugin:

- ``PRISM_PLUGIN_MAGIC_COOKIE`` must hold the fixed cookie, else the plugin was started by hand:
  say so and exit 1;
- ``PRISM_PLUGIN_PROTOCOL_VERSIONS`` lists the plugin protocol versions the proxy accepts;
- ``PRISM_PLUGIN_SOCKET`` is the Unix socket to listen on, with mode 0600;
- once listening, print exactly one line ``PRISM|1|<version>|unix|<socket>|grpc`` and flush;
- end-of-file on stdin means the proxy is gone: exit.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NoReturn, TextIO

CORE_PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

ENV_MAGIC_COOKIE = "PRISM_PLUGIN_MAGIC_COOKIE"
ENV_PROTOCOL_VERSIONS = "PRISM_PLUGIN_PROTOCOL_VERSIONS"
ENV_SOCKET = "PRISM_PLUGIN_SOCKET"
# Public and fixed: it tells a plugin it was launched by the proxy. Not a secret.
MAGIC_COOKIE = "7f3c1e9a5b2d4f60a8e4c2b1d9f07a36prism"

NOT_A_COMMAND_MESSAGE = (
    "This program is a Prism plugin (asyncio_kv). It is not meant to be executed directly; the "
    "Prism proxy launches it as a sidecar process and talks to it over gRPC on a private Unix "
    "socket.\n"
    "To use it, reference it from a namespace's plugin configuration, e.g.\n"
    "  plugin: {name: asyncio_kv, mode: sidecar, command: [python, -m, prism_plugin_asyncio_kv]}\n"
    "and start the proxy (`prism serve`).\n"
)

_NUMBER = re.compile(r"[0-9]{1,9}")


def _fail(message: str, stderr: TextIO | None) -> NoReturn:
    stream = sys.stderr if stderr is None else stderr
    stream.write(message)
    stream.flush()
    raise SystemExit(1)


def check_magic_cookie(environ: Mapping[str, str], *, stderr: TextIO | None = None) -> None:
    """Exit 1 with an explanation unless the proxy launched this process."""
    if environ.get(ENV_MAGIC_COOKIE) != MAGIC_COOKIE:
        _fail(NOT_A_COMMAND_MESSAGE, stderr)


def socket_path(environ: Mapping[str, str], *, stderr: TextIO | None = None) -> Path:
    """Where the proxy wants this plugin to listen; exit 1 if it did not say."""
    value = environ.get(ENV_SOCKET, "")
    if not value.startswith("/"):
        _fail(f"{ENV_SOCKET} must name an absolute socket path (got {value!r}).\n", stderr)
    return Path(value)


def negotiate_protocol_version(
    environ: Mapping[str, str],
    supported: Iterable[int] = SUPPORTED_PROTOCOL_VERSIONS,
    *,
    stderr: TextIO | None = None,
) -> int:
    """The highest plugin protocol version both sides speak; exit 1 if there is none."""
    parts = (v.strip() for v in environ.get(ENV_PROTOCOL_VERSIONS, "").split(","))
    offered = {int(v) for v in parts if _NUMBER.fullmatch(v)}
    supported = set(supported)
    common = offered & supported
    if not common:
        _fail(
            "This plugin implements plugin protocol versions "
            f"{','.join(map(str, sorted(supported)))}, but the proxy offered "
            f"{','.join(map(str, sorted(offered))) or 'none'}: upgrade the older of the two.\n",
            stderr,
        )
    return max(common)


def handshake_line(path: Path, protocol_version: int) -> str:
    """The line to print (without its newline) once the socket is listening."""
    address = os.fspath(path)
    if any(c in address for c in "|\r\n"):
        raise ValueError(f"socket path {address!r} cannot be sent in a handshake line")
    return f"PRISM|{CORE_PROTOCOL_VERSION}|{protocol_version}|unix|{address}|grpc"


async def wait_for_stdin_eof(fd: int = 0) -> None:
    """Return when the proxy is gone: it holds the write end of our stdin for our whole life, so
    end-of-file (the kernel closes it even when the proxy is killed) means it stopped or died.
    Anything read is discarded. A stdin that is not a pipe (a file) counts as closed.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    # A duplicate, so closing the transport never closes the process's own fd 0.
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except ValueError:  # not a pipe, socket or character device
        pipe.close()
        return
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()
