"""The sidecar process: handshake, a grpclib server on the proxy's Unix socket, clean exit.

``python -m prism_plugin_asyncio_kv`` (or the ``prism-plugin-asyncio-kv`` script). The process
exits after answering ``Shutdown``, on SIGTERM/SIGINT, or when its stdin reaches end-of-file
(the proxy is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TextIO

from grpclib.server import Server

from prism_plugin_asyncio_kv.handshake import (
    check_magic_cookie,
    handshake_line,
    negotiate_protocol_version,
    socket_path,
    wait_for_stdin_eof,
)
from prism_plugin_asyncio_kv.service import KvService

log = logging.getLogger("prism_plugin_asyncio_kv")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(
    path: Path,
    protocol_version: int,
    *,
    service: KvService | None = None,
    stdout: TextIO | None = None,
    watch_stdin: bool = True,
) -> None:
    """Listen on ``path`` (mode 0600), print the handshake line to ``stdout``, and serve until
    Shutdown was answered, SIGTERM/SIGINT, or end-of-file on stdin.

    Stopping (cancellation too) closes the server: calls still running (open ``multi_get``
    streams; unary operations finish at once) are cancelled, and their handlers get up to the
    grace period (``ShutdownRequest.grace_period_ms``, default 5 s) to end."""
    service = service or KvService()
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    # Before the handshake: from then on the proxy may SIGTERM us, and that must be a clean stop.
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, signalled.set)
    try:
        server = Server([service])
        old_umask = os.umask(0o177)  # the socket is born 0600: no moment others could connect
        try:
            await server.start(path=os.fspath(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        try:
            print(handshake_line(path, protocol_version), file=stdout or sys.stdout, flush=True)
            log.info("listening on %s", path)
            reason = await _wait_for_stop(service, signalled, watch_stdin)
            log.info("stopping: %s", reason)
        finally:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), service.grace_seconds)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _wait_for_stop(service: KvService, signalled: asyncio.Event, watch_stdin: bool) -> str:
    waits: dict[str, Awaitable[object]] = {
        "Shutdown answered": service.shut_down.wait(),
        "signal": signalled.wait(),
    }
    if watch_stdin:
        waits["stdin closed: the proxy is gone"] = wait_for_stdin_eof()
    tasks = {asyncio.ensure_future(w): reason for reason, w in waits.items()}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return tasks[next(iter(done))]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """The sidecar entry point the proxy launches (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m prism_plugin_asyncio_kv",
        description="Example Prism sidecar plugin (asyncio + grpclib): in-memory key-value. "
        "The Prism proxy launches it; it is not meant to be run by hand.",
    )
    parser.parse_args(argv)
    env = os.environ if environ is None else environ
    check_magic_cookie(env)
    version = negotiate_protocol_version(env)
    path = socket_path(env)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(path, version))
