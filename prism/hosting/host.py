"""The plugin host: one nursery scope per plugin instance, a route per namespace.

::

    PluginHost.run ── host nursery
       └─ one task per instance: its scope holds the plugin (in-process object, sidecar
          supervisor + channel, or remote channel) and its health loop. Cancelling the scope
          = Shutdown, reap, close. Nothing outlives it.

Hot reload (:meth:`PluginHost.reload`): start the new instance and wait until it is
Initialized and healthy, switch the namespace's route atomically, let the old instance's
in-flight calls finish within ``drain_grace``, send it Shutdown, then cancel its scope.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

import prism
from prism._proto.google.protobuf import Struct
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.plugin.v1 import (
    HealthCheckResponse,
    HealthCheckResponseStatus,
    InitializeRequest,
    ProxyCapabilities,
)
from prism.grpc.channel import open_channel
from prism.grpc.transport import client_ssl_context
from prism.grpc.wire.status import GrpcError, NotFound, Unavailable
from prism.hosting.client import GrpcClient, InProcessClient, PluginClient
from prism.hosting.isolation import ResourceLimits
from prism.hosting.loader import load_plugin_class
from prism.hosting.process import PluginSpec
from prism.hosting.supervisor import Crashed, PluginEvent, PluginSupervisor, Ready
from prism.hosting.verify import VerifyPolicy
from prism.proxy.config import NamespaceConfig, ProxyConfig
from prism.sdk.instance import open_plugin
from prism.sdk.typed import pack

log = logging.getLogger("prism.hosting")

ReceiveBytes = Callable[[], Awaitable[bytes | None]]
SendBytes = Callable[[bytes], Awaitable[None]]
StatusCallback = Callable[[str, bool], None]


class PluginStartFailed(Exception):
    """A namespace's plugin could not be started; the message says which and why."""


class Instance:
    """One running plugin instance, as routes see it."""

    def __init__(self, namespace: str, mode: str, generation: int) -> None:
        self.namespace = namespace
        self.mode = mode
        self.generation = generation
        self.client: PluginClient | None = None
        self.down_reason = "starting"
        self.scope = trio.CancelScope()
        self.in_flight = 0
        self.draining = False
        self._idle = trio.Event()
        self.health: HealthCheckResponse | None = None

    @property
    def available(self) -> bool:
        return self.client is not None

    def up(self, client: PluginClient) -> None:
        self.client = client

    def down(self, reason: str) -> None:
        self.client = None
        self.down_reason = reason

    @asynccontextmanager
    async def track(self) -> AsyncIterator[PluginClient]:
        client = self.client
        if client is None:
            raise Unavailable(
                f"the plugin for namespace {self.namespace!r} is unavailable ({self.down_reason})"
            )
        self.in_flight += 1
        try:
            yield client
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self.draining:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` s for in-flight calls; True when all of them finished."""
        self.draining = True
        if self.in_flight == 0:
            return True
        with trio.move_on_after(grace):
            await self._idle.wait()
        return self.in_flight == 0


class Route:
    """A namespace's route: forwards to whichever instance is current."""

    def __init__(self, config: NamespaceConfig) -> None:
        self.config = config
        self.current: Instance | None = None
        self.reload_lock = trio.Lock()

    def _instance(self) -> Instance:
        instance = self.current
        if instance is None:
            raise Unavailable(f"namespace {self.config.name!r} has no running plugin")
        return instance

    async def execute(self, request: bytes) -> bytes:
        async with self._instance().track() as client:
            return await client.execute(request)

    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None:
        async with self._instance().track() as client:
            await client.execute_stream(receive, send)


class PluginHost:
    def __init__(self, config: ProxyConfig, on_status: StatusCallback | None = None) -> None:
        self.config = config
        self.routes: dict[str, Route] = {}
        self._nursery: trio.Nursery | None = None
        self._generations = itertools.count(1)
        self._on_status = on_status or (lambda namespace, serving: None)
        sec = config.plugin_security
        self.policy = VerifyPolicy.from_config(
            require_signature=sec.require_signatures,
            trusted_keys=sec.trusted_keys,
            check_permissions=sec.verify_permissions,
        )

    def route(self, namespace: str) -> Route:
        route = self.routes.get(namespace)
        if route is None:
            raise NotFound(f"unknown namespace {namespace!r}")
        return route

    async def run(
        self, *, task_status: trio.TaskStatus[PluginHost] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every namespace's plugin (failures raise PluginStartFailed), report started,
        then keep them running until cancelled. Cancellation shuts every instance down."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for ns in self.config.namespaces:
                route = Route(ns)
                route.current = await self._start(ns)
                self.routes[ns.name] = route
            task_status.started(self)
            await trio.sleep_forever()

    async def reload(self, namespace: str, config: NamespaceConfig | None = None) -> Instance:
        """Replace ``namespace``'s plugin instance without dropping a call (module docstring).

        If the new instance fails to start, the old one keeps serving and the error is raised.
        """
        route = self.route(namespace)
        async with route.reload_lock:
            new_config = config or route.config
            new = await self._start(new_config)
            old, route.current, route.config = route.current, new, new_config
            self._on_status(namespace, new.available)
            log.info(
                "namespace %r now served by instance %d (%s)", namespace, new.generation, new.mode
            )
            if old is not None:
                await self._retire(old, new_config.plugin.drain_grace, "hot reload")
            return new

    async def _retire(self, old: Instance, grace: float, reason: str) -> None:
        drained = await old.drain(grace)
        if not drained:
            log.warning(
                "namespace %r: %d call(s) still running on instance %d after %.1f s; "
                "cancelling them",
                old.namespace,
                old.in_flight,
                old.generation,
                grace,
            )
        client = old.client
        if client is not None:
            with trio.move_on_after(grace):
                try:
                    await client.shutdown(grace, reason)
                except GrpcError as exc:
                    log.info("Shutdown of instance %d failed: %s", old.generation, exc)
        old.scope.cancel()

    async def _start(self, ns: NamespaceConfig) -> Instance:
        assert self._nursery is not None
        instance = Instance(ns.name, ns.plugin.mode, next(self._generations))
        runner = {
            "in_process": self._run_in_process,
            "sidecar": self._run_sidecar,
            "remote": self._run_remote,
        }[ns.plugin.mode]
        try:
            with trio.fail_after(ns.plugin.startup_timeout):
                await self._nursery.start(self._instance_scope, runner, ns, instance)
        except trio.TooSlowError:
            raise PluginStartFailed(
                f"namespace {ns.name!r}: plugin {ns.plugin.name!r} did not become ready within "
                f"{ns.plugin.startup_timeout:g} s"
            ) from None
        except PluginStartFailed:
            raise
        except Exception as exc:
            raise PluginStartFailed(
                f"namespace {ns.name!r}: plugin {ns.plugin.name!r} failed to start: {exc}"
            ) from exc
        return instance

    async def _instance_scope(
        self,
        runner: Callable[..., Awaitable[None]],
        ns: NamespaceConfig,
        instance: Instance,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with instance.scope:
            try:
                await runner(ns, instance, task_status)
            finally:
                instance.down("stopped")
                self._report(instance, False)

    def _report(self, instance: Instance, serving: bool) -> None:
        """Health status of a namespace follows its current instance only (not one that is
        starting for a reload or draining after one)."""
        route = self.routes.get(instance.namespace)
        if route is None or route.current is instance:
            self._on_status(instance.namespace, serving)

    # -- the three deployment models ------------------------------------------------------

    async def _run_in_process(
        self, ns: NamespaceConfig, instance: Instance, task_status: trio.TaskStatus[None]
    ) -> None:
        cls = load_plugin_class(ns.plugin.name, self.policy)
        async with open_plugin(cls()) as plugin:
            client = InProcessClient(plugin)
            await self._initialize(client, ns)
            instance.up(client)
            self._report(instance, True)
            task_status.started()
            await self._health_loop(ns, instance, client)

    async def _run_sidecar(
        self, ns: NamespaceConfig, instance: Instance, task_status: trio.TaskStatus[None]
    ) -> None:
        command = ns.plugin.command
        if command is None:
            cls_ref = ns.plugin.name
            # Verify the plugin's files here too: the sidecar imports them in its own process.
            load_plugin_class(cls_ref, self.policy)
            command = (sys.executable, "-m", "prism.sdk.runner", cls_ref)
        lim = ns.plugin.limits
        spec = PluginSpec(
            name=f"{ns.name}",
            command=command,
            limits=ResourceLimits(
                memory_bytes=lim.memory_mb * (1 << 20) if lim.memory_mb else None,
                cpu_seconds=lim.cpu_seconds,
                open_files=lim.open_files,
            ),
            startup_grace=ns.plugin.startup_timeout,
            runtime_parent=self.config.runtime_dir,
        )
        send, receive = trio.open_memory_channel[PluginEvent](64)

        def on_event(event: PluginEvent) -> None:
            if isinstance(event, Crashed):
                # Fail fast at once: callers must not wait for the restart.
                instance.down(event.reason)
                self._report(instance, False)
            send.send_nowait(event)

        supervisor = PluginSupervisor(spec, on_event=on_event)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            connection: trio.CancelScope | None = None
            started = False
            async with receive:
                async for event in receive:
                    if isinstance(event, Crashed) and connection is not None:
                        connection.cancel()
                        connection = None
                    elif isinstance(event, Ready):
                        target = "unix:" + str(event.handshake.socket_path)
                        try:
                            connection = await nursery.start(
                                self._connect, target, None, None, ns, instance
                            )
                        except GrpcError as exc:
                            if not started:
                                raise
                            log.error(
                                "namespace %r: restarted plugin failed to initialize: %s",
                                ns.name,
                                exc,
                            )
                            continue
                        if not started:
                            started = True
                            task_status.started()

    async def _run_remote(
        self, ns: NamespaceConfig, instance: Instance, task_status: trio.TaskStatus[None]
    ) -> None:
        tls = ns.plugin.tls
        assert tls is not None
        assert ns.plugin.endpoint is not None
        ctx = client_ssl_context(tls.ca, tls.cert, tls.key)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                self._connect, ns.plugin.endpoint, ctx, tls.server_hostname, ns, instance
            )
            task_status.started()

    async def _connect(
        self,
        target: str,
        ssl_context: Any,
        server_hostname: str | None,
        ns: NamespaceConfig,
        instance: Instance,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Channel to a plugin process or service: Initialize, then health-check until
        cancelled (the sidecar's crash cancels it; a restart opens a new one)."""
        with trio.CancelScope() as scope:
            async with open_channel(
                target, ssl_context=ssl_context, server_hostname=server_hostname
            ) as channel:
                client = GrpcClient(channel)
                await self._initialize(client, ns)
                instance.up(client)
                self._report(instance, True)
                task_status.started(scope)
                await self._health_loop(ns, instance, client)

    async def _initialize(self, client: PluginClient, ns: NamespaceConfig) -> None:
        request = InitializeRequest(
            namespace=ns.name,
            backend_type=ns.plugin.name,
            config=pack(ConfigDocument(values=Struct.from_dict(dict(ns.config)))),
            credentials=dict(ns.credentials),
            capabilities=ProxyCapabilities(
                supports_metrics_push=False,
                supports_distributed_tracing=False,
                supports_hot_reload=True,
                proxy_version=prism.__version__,
            ),
        )
        response = await client.initialize(request)
        if not response.success:
            raise PluginStartFailed(
                f"namespace {ns.name!r}: plugin {ns.plugin.name!r} refused to initialize: "
                f"{response.error}"
            )
        health = await client.health_check()
        if health.status == HealthCheckResponseStatus.UNHEALTHY:
            raise PluginStartFailed(
                f"namespace {ns.name!r}: plugin {ns.plugin.name!r} is unhealthy after "
                f"Initialize: {health.message}"
            )

    async def _health_loop(
        self, ns: NamespaceConfig, instance: Instance, client: PluginClient
    ) -> None:
        while True:
            await trio.sleep(ns.plugin.health_interval)
            try:
                with trio.fail_after(max(ns.plugin.health_interval, 1.0)):
                    instance.health = await client.health_check()
            except (GrpcError, trio.TooSlowError) as exc:
                log.warning("namespace %r: health check failed: %s", ns.name, exc)
                continue
            self._report(instance, instance.health.status != HealthCheckResponseStatus.UNHEALTHY)
