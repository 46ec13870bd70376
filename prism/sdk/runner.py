"""Run a plugin as its own process: a sidecar launched by the proxy, or a remote service.

Sidecar (the proxy runs ``python -m prism.hosting.launcher <plugin>``, which verifies and
imports the plugin, then calls :func:`serve_plugin`)::

    listens on the private Unix socket the proxy named in PRISM_PLUGIN_SOCKET (mode 0600),
    prints the handshake line, and exits when Shutdown was answered, on SIGTERM, or when the
    proxy is gone (stdin closed).

Remote (``prism plugin serve <plugin> --listen host:port --tls-cert ... --tls-key ...
--tls-client-ca ...``): TCP with mTLS; the proxy must present a certificate the CA signed.
A long-lived service: each proxy gets a plugin instance of its own (a session, see
:mod:`prism.sdk.grpc_service`), and the process runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import gc
import logging
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import trio

from prism import grpc as pg
from prism import logsetup
from prism.grpc.health import Health, HealthState
from prism.grpc.transport import split_host_port
from prism.plugin_protocol.handshake import (
    DEFAULT_MAX_MESSAGE_SIZE,
    handshake_line,
    plugin_log_level,
    watch_parent,
)
from prism.sdk._warmup import warm_up
from prism.sdk.grpc_service import (
    DEFAULT_SESSION_IDLE_TIMEOUT,
    BackendPluginService,
    SessionPluginService,
)
from prism.sdk.instance import open_plugin
from prism.sdk.plugin import BackendPlugin

log = logging.getLogger("prism.sdk.runner")


async def serve_plugin(
    plugin: BackendPlugin | Callable[[], BackendPlugin],
    *,
    unix_socket: Path | None = None,
    listen: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_version: int | None = None,
    watch_stdin: bool = False,
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    freeze_gc: bool = False,
    task_status: trio.TaskStatus[tuple[str, int] | str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a plugin until SIGTERM/SIGINT, the parent goes away (``watch_stdin``) or
    cancellation; on a Unix socket (a sidecar) also until Shutdown was answered.

    ``plugin`` is a plugin object or a factory (a plugin class). On a Unix socket it is one
    instance for the process's life; on TCP (``listen``: a remote service) every proxy session
    gets a fresh object (:class:`~prism.sdk.grpc_service.SessionPluginService`; an object passed
    here serves the first session, and ``type(plugin)()`` later ones). Leaving shuts every
    instance down gracefully.

    A sidecar (``handshake_version`` given: the proxy launched it) logs JSON lines on stderr,
    from the level the proxy runs at (``PRISM_PLUGIN_LOG_LEVEL``), which the proxy forwards
    with the namespace and plugin as fields, unless the process has set up logging already.

    ``max_message_size`` bounds messages in both directions; it must be at least the proxy's
    (a sidecar gets it in ``PRISM_PLUGIN_MAX_MESSAGE_SIZE``), or large values fail at this hop.

    Before the handshake (or reporting started) the process is warmed up
    (:func:`prism.sdk._warmup.warm_up`: every message type it will meet is encoded and decoded
    once), so that the first calls, a warm standby's Initialize after a crash above all, do not
    pay for it. ``freeze_gc``: then also ``gc.collect()`` and ``gc.freeze()``, so that later
    collections no longer scan what start-up made (the modules, the plugin, the server), as
    ``prism serve`` does for the proxy. Process-wide, so only for a process of its own: the
    sidecar launcher and ``prism plugin serve`` set it.
    """
    options = pg.ServerOptions(
        max_receive_message_size=max_message_size, max_send_message_size=max_message_size
    )
    if unix_socket is not None:
        if handshake_version is not None and not logging.getLogger().handlers:
            # Launched by the proxy, which reads JSON lines from our stderr (prism.logsetup).
            logsetup.configure("json", plugin_log_level())  # the proxy's level
        instance_plugin = plugin if isinstance(plugin, BackendPlugin) else plugin()
        async with open_plugin(instance_plugin) as instance:
            service = BackendPluginService(instance)
            services = [service, Health(HealthState())]
            server = pg.Server(services, options)
            async with trio.open_nursery() as nursery:
                address: tuple[str, int] | str = await nursery.start(server.serve_unix, unix_socket)
                _ready(type(instance_plugin), services, freeze_gc)
                if handshake_version is not None:
                    print(handshake_line(unix_socket, handshake_version), flush=True)
                task_status.started(address)
                stop = trio.Event()
                nursery.start_soon(_set_on_signal, stop)
                if watch_stdin:
                    nursery.start_soon(_set_after, watch_parent, stop)
                nursery.start_soon(_set_after, service.shut_down.wait, stop)
                await stop.wait()
                await server.shutdown(grace=instance_plugin.default_grace_seconds)
                nursery.cancel_scope.cancel()
        return
    if listen is None:
        raise ValueError("serve_plugin needs unix_socket or listen")
    host, port = split_host_port(listen)
    async with trio.open_nursery() as sessions:
        remote = SessionPluginService(_factory(plugin), sessions, idle_timeout=session_idle_timeout)
        health = HealthState()
        services = [remote, Health(health)]
        server = pg.Server(services, options)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: server.serve_tcp(
                    host, port, ssl_context=ssl_context, task_status=task_status
                )
            )
            _ready(_plugin_type(plugin), services, freeze_gc)
            task_status.started(address)
            stop = trio.Event()
            nursery.start_soon(_set_on_signal, stop)
            if watch_stdin:
                nursery.start_soon(_set_after, watch_parent, stop)
            await stop.wait()
            # Proxies watch the service's health (grpc.health.v1 Watch) to notice it is gone:
            # end those streams now rather than at the end of the grace period.
            health.shutdown()
            grace = max(
                (s.instance.plugin.default_grace_seconds for s in remote.sessions.values()),
                default=5.0,
            )
            await server.shutdown(grace=grace)
            nursery.cancel_scope.cancel()
        sessions.cancel_scope.cancel()  # each session's instance shuts down gracefully


def _ready(plugin_type: type[BackendPlugin], services: list[pg.Service], freeze_gc: bool) -> None:
    warm_up(plugin_type, services)
    if freeze_gc:
        gc.collect()
        gc.freeze()


def _plugin_type(plugin: BackendPlugin | Callable[[], BackendPlugin]) -> type[BackendPlugin]:
    """The plugin's class, for the warm-up (the base class for a factory that is no class: the
    protocol's messages are warmed all the same)."""
    if isinstance(plugin, BackendPlugin):
        return type(plugin)
    if isinstance(plugin, type) and issubclass(plugin, BackendPlugin):
        return plugin
    return BackendPlugin


def _factory(plugin: BackendPlugin | Callable[[], BackendPlugin]) -> Callable[[], BackendPlugin]:
    if not isinstance(plugin, BackendPlugin):
        return plugin
    first: list[BackendPlugin] = [plugin]

    def make() -> BackendPlugin:
        return first.pop() if first else type(plugin)()

    return make


async def _set_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def _set_after(wait: object, stop: trio.Event) -> None:
    await wait()  # type: ignore[operator]
    stop.set()
