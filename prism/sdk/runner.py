"""Run a plugin as its own process: a sidecar launched by the proxy, or a remote service.

Sidecar (the proxy runs ``python -m prism.sdk.runner <plugin>``)::

    listens on the private Unix socket the proxy named in PRISM_PLUGIN_SOCKET (mode 0600),
    prints the handshake line, and exits when Shutdown was answered, on SIGTERM, or when the
    proxy is gone (stdin closed).

Remote (``prism plugin serve <plugin> --listen host:port --tls-cert ... --tls-key ...
--tls-client-ca ...``): TCP with mTLS; the proxy must present a certificate the CA signed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from pathlib import Path

import trio

from prism import grpc as pg
from prism.grpc.health import Health, HealthState
from prism.grpc.transport import split_host_port
from prism.hosting.handshake import (
    SUPPORTED_PROTOCOL_VERSIONS,
    check_magic_cookie,
    handshake_line,
    negotiate_protocol_version,
    plugin_socket_path,
    watch_parent,
)
from prism.hosting.loader import load_plugin_class
from prism.sdk.grpc_service import BackendPluginService
from prism.sdk.instance import open_plugin
from prism.sdk.plugin import BackendPlugin

log = logging.getLogger("prism.sdk.runner")


async def serve_plugin(
    plugin: BackendPlugin,
    *,
    unix_socket: Path | None = None,
    listen: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_version: int | None = None,
    watch_stdin: bool = False,
    task_status: trio.TaskStatus[tuple[str, int] | str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``plugin`` until Shutdown is answered, SIGTERM/SIGINT, the parent goes away
    (``watch_stdin``) or cancellation. Leaving shuts the plugin instance down gracefully."""
    async with open_plugin(plugin) as instance:
        service = BackendPluginService(instance)
        server = pg.Server([service, Health(HealthState())])
        async with trio.open_nursery() as nursery:
            if unix_socket is not None:
                address: tuple[str, int] | str = await nursery.start(server.serve_unix, unix_socket)
                if handshake_version is not None:
                    print(handshake_line(unix_socket, handshake_version), flush=True)
            else:
                assert listen is not None
                host, port = split_host_port(listen)
                address = await nursery.start(
                    lambda task_status: server.serve_tcp(
                        host, port, ssl_context=ssl_context, task_status=task_status
                    )
                )
            task_status.started(address)
            stop = trio.Event()
            nursery.start_soon(_set_on_signal, stop)
            if watch_stdin:
                nursery.start_soon(_set_after, watch_parent, stop)
            nursery.start_soon(_set_after, service.shut_down.wait, stop)
            await stop.wait()
            await server.shutdown(grace=plugin.default_grace_seconds)
            nursery.cancel_scope.cancel()


async def _set_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def _set_after(wait: object, stop: trio.Event) -> None:
    await wait()  # type: ignore[operator]
    stop.set()


def main(argv: list[str] | None = None) -> None:
    """``python -m prism.sdk.runner <plugin>``: the sidecar entry point the proxy launches."""
    parser = argparse.ArgumentParser(prog="python -m prism.sdk.runner")
    parser.add_argument("plugin", help="entry point name or package.module:Class")
    args = parser.parse_args(argv)
    check_magic_cookie()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    cls = load_plugin_class(args.plugin)
    version = negotiate_protocol_version(SUPPORTED_PROTOCOL_VERSIONS)
    trio.run(
        lambda: serve_plugin(
            cls(), unix_socket=plugin_socket_path(), handshake_version=version, watch_stdin=True
        )
    )


if __name__ == "__main__":
    main()
