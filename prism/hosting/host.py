"""The plugin host: one nursery scope per plugin instance, a route per namespace.

::

    PluginHost.run ── host nursery
       └─ one task per instance: its scope holds the plugin (in-process object, sidecar
          supervisor + channel, or remote channel), its health loop and its metrics poller.
          Cancelling the scope = Shutdown, reap, close. Nothing outlives it.

An instance that fails after it started (an in-process plugin's background task crashes, a
remote service's channel breaks beyond repair) is marked down at once — calls get UNAVAILABLE
without waiting — and started again with backoff, re-Initialized before it is routed to. A
sidecar's crashes are handled by its supervisor the same way (``supervisor.PluginSupervisor``).

Hot reload (:meth:`PluginHost.reload`): start the new instance and wait until it is
Initialized and healthy, switch the namespace's route atomically, let the old instance's
in-flight calls finish within ``drain_grace``, send it Shutdown, then cancel its scope.

Stopping (cancelling :meth:`PluginHost.run`) sends every instance Shutdown, all at once and
each within its ``drain_grace``, then cancels their scopes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import prism
from prism._proto.google.protobuf import Struct
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.plugin.v1 import (
    HealthCheckResponse,
    HealthCheckResponseStatus,
    InitializeRequest,
    PluginMetrics,
    ProxyCapabilities,
)
from prism.config import ConfigError, NamespaceConfig, ProxyConfig
from prism.grpc.channel import open_channel
from prism.grpc.transport import client_ssl_context
from prism.grpc.wire.status import GrpcError, NotFound
from prism.hosting.client import GrpcClient, InProcessClient, PluginClient
from prism.hosting.instance import Instance, MetricsTotals, Route
from prism.hosting.isolation import ResourceLimits
from prism.hosting.loader import artifact_path, load_plugin_class, resolve
from prism.hosting.process import BackoffPolicy, PluginSpec
from prism.hosting.supervisor import Backoff, Crashed, PluginEvent, PluginSupervisor, Ready
from prism.hosting.verify import PluginRefused, VerifyPolicy, verify_artifact
from prism.sdk.grpc_service import SESSION_DETAIL
from prism.sdk.instance import open_plugin
from prism.sdk.typed import pack

log = logging.getLogger("prism.hosting")

__all__ = ["Instance", "MetricsTotals", "PluginHost", "PluginStartFailed", "Route"]

StatusCallback = Callable[[str, bool], None]
Runner = Callable[..., Awaitable[None]]

RESTART_BACKOFF = BackoffPolicy()


class PluginStartFailed(Exception):
    """A namespace's plugin could not be started; the message says which and why."""


class PluginHost:
    def __init__(self, config: ProxyConfig, on_status: StatusCallback | None = None) -> None:
        self.config = config
        self.routes: dict[str, Route] = {}
        self._nursery: trio.Nursery | None = None
        self._generations = itertools.count(1)
        self._instances: set[Instance] = set()  # every instance whose scope is open
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

    def latest_metrics(self, namespace: str) -> PluginMetrics | None:
        """The last metrics interval collected from ``namespace``'s current instance."""
        route = self.routes.get(namespace)
        instance = None if route is None else route.current
        return None if instance is None else instance.metrics

    async def run(
        self, *, task_status: trio.TaskStatus[PluginHost] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every namespace's plugin (failures raise PluginStartFailed), report started,
        then keep them running until cancelled. Cancellation sends every instance Shutdown
        (shielded, each bounded by its ``drain_grace``) and then stops them."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for ns in self.config.namespaces:
                    route = Route(ns)
                    route.current = await self._start(ns)
                    self.routes[ns.name] = route
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                # Instance scopes are shielded once started (so this cancellation does not tear
                # them down before they are sent Shutdown): stop each one explicitly.
                try:
                    with trio.CancelScope(shield=True):
                        await self._shutdown_all()
                finally:
                    for instance in list(self._instances):
                        instance.scope.cancel()

    async def _shutdown_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for route in self.routes.values():
                instance = route.current
                if instance is not None:
                    nursery.start_soon(
                        self._shutdown, instance, route.config.plugin.drain_grace, "proxy stopping"
                    )

    async def reload(self, namespace: str, config: NamespaceConfig | None = None) -> Instance:
        """Replace ``namespace``'s plugin instance without dropping a call (module docstring).

        If the new instance fails to start, the old one keeps serving and the error is raised.
        Cancellation before the switch abandons the new instance; after it, cuts the old
        instance's drain short.
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
                old.unary_in_flight,
                old.generation,
                grace,
            )
        with trio.CancelScope(shield=True):
            await self._shutdown(old, grace, reason)

    async def _shutdown(self, instance: Instance, grace: float, reason: str) -> None:
        """Shutdown (within ``grace``), then cancel the instance's scope. Not cancellable."""
        instance.retiring = True
        client = instance.client
        if client is not None:
            with trio.move_on_after(grace):
                try:
                    await client.shutdown(grace, reason)
                except GrpcError as exc:
                    log.info("Shutdown of instance %d failed: %s", instance.generation, exc)
        instance.scope.cancel()

    async def _start(self, ns: NamespaceConfig) -> Instance:
        if self._nursery is None:
            raise RuntimeError("the plugin host is not running")
        instance = Instance(ns.name, ns.plugin.mode, next(self._generations))
        runner: Runner = {
            "in_process": self._run_in_process,
            "sidecar": self._run_sidecar,
            "remote": self._run_remote,
        }[ns.plugin.mode]
        what = f"namespace {ns.name!r}: plugin {ns.plugin.name!r}"
        try:
            with trio.fail_after(ns.plugin.startup_timeout):
                await self._nursery.start(self._instance_scope, runner, ns, instance)
        except Exception as exc:
            leaves = _leaves(exc)
            if any(isinstance(leaf, trio.TooSlowError) for leaf in leaves):
                raise PluginStartFailed(
                    f"{what} did not become ready within {ns.plugin.startup_timeout:g} s"
                ) from None
            if len(leaves) == 1 and isinstance(leaves[0], PluginStartFailed):
                raise leaves[0] from None
            reasons = "; ".join(str(leaf) or type(leaf).__name__ for leaf in leaves)
            raise PluginStartFailed(f"{what} failed to start: {reasons}") from exc
        return instance

    async def _instance_scope(
        self,
        runner: Runner,
        ns: NamespaceConfig,
        instance: Instance,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._instances.add(instance)
        with instance.scope:
            try:
                await self._keep_running(runner, ns, instance, task_status)
            finally:
                self._instances.discard(instance)
                instance.down("stopped")
                instance.pid = None
                self._report(instance, False)

    async def _keep_running(
        self,
        runner: Runner,
        ns: NamespaceConfig,
        instance: Instance,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Run ``runner``; once it has started, start it again (with backoff) whenever it
        fails or ends. Its first start's failure is raised."""
        backoff = Backoff(RESTART_BACKOFF)
        started = False
        while True:
            ready_at: float | None = None
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(runner, ns, instance)
                    ready_at = trio.current_time()
                    if not started:
                        started = True
                        # From now on only this instance's own scope stops it: not the host's
                        # cancellation, which must first send it Shutdown (see run()).
                        instance.scope.shield = True
                        task_status.started()
            except Exception as exc:
                if not started:
                    raise
                reason = "; ".join(str(leaf) or type(leaf).__name__ for leaf in _leaves(exc))
            else:
                if not started:
                    raise PluginStartFailed(
                        f"namespace {ns.name!r}: plugin {ns.plugin.name!r} ended while starting"
                    )
                reason = "the plugin instance ended"
            instance.down(reason)
            self._report(instance, False)
            if instance.retiring:
                return
            ran_for = 0.0 if ready_at is None else trio.current_time() - ready_at
            delay = backoff.next_delay(ran_for)
            log.error(
                "namespace %r: plugin %r failed: %s; restarting in %.1f s",
                ns.name,
                ns.plugin.name,
                reason,
                delay,
            )
            await trio.sleep(delay)
            instance.restarts += 1

    def _report(self, instance: Instance, serving: bool) -> None:
        """Health status of a namespace follows its current instance only (not one that is
        starting for a reload or draining after one)."""
        route = self.routes.get(instance.namespace)
        if route is None or route.current is instance:
            self._on_status(instance.namespace, serving)

    # -- the three deployment models ------------------------------------------------------

    async def _run_in_process(
        self, ns: NamespaceConfig, instance: Instance, *, task_status: trio.TaskStatus[None]
    ) -> None:
        cls = load_plugin_class(ns.plugin.name, self.policy)
        async with open_plugin(cls()) as plugin:
            client = InProcessClient(plugin)
            instance.health = await self._initialize(client, ns)
            instance.up(client)
            self._report(instance, True)
            task_status.started()
            await self._watch(ns, instance, client)

    def sidecar_command(self, ns: NamespaceConfig) -> tuple[str, ...]:
        """The command that launches ``ns``'s sidecar: its ``command``, or prism's runner with
        the proxy's verification policy (the runner verifies the files it imports)."""
        if ns.plugin.command is not None:
            return ns.plugin.command
        sec = self.config.plugin_security
        flags: list[str] = []
        if not sec.verify_permissions:
            flags.append("--no-verify-permissions")
        if sec.require_signatures:
            flags.append("--require-signature")
        for key in sec.trusted_keys:
            flags += ["--trusted-key", key]
        return (sys.executable, "-m", "prism.sdk.runner", *flags, ns.plugin.name)

    def _precheck(self, ref: str) -> None:
        """Verify a sidecar plugin's files from here too, when this process can find them, for
        a refusal that does not wait for a process launch. Nothing is imported."""
        try:
            module, _ = resolve(ref)
            path = artifact_path(ref, module)
        except PluginRefused:
            return  # perhaps only on the sidecar's PYTHONPATH: the runner decides
        verify_artifact(ref, path, self.policy)

    async def _run_sidecar(
        self, ns: NamespaceConfig, instance: Instance, *, task_status: trio.TaskStatus[None]
    ) -> None:
        if ns.plugin.command is None:
            self._precheck(ns.plugin.name)
        lim = ns.plugin.limits
        spec = PluginSpec(
            name=ns.name,
            command=self.sidecar_command(ns),
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
                instance.pid = None
                self._report(instance, False)
            elif isinstance(event, Ready):
                instance.pid = event.pid
            # BrokenResourceError: the scope is ending and nobody reads events any more
            # (the supervisor's final Stopped, once this task's receive loop was cancelled).
            with contextlib.suppress(trio.BrokenResourceError, trio.WouldBlock):
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
                        if not instance.retiring:
                            instance.restarts += 1
                    elif isinstance(event, Ready):
                        target = "unix:" + str(event.handshake.socket_path)
                        try:
                            # A restart gets the same time to become ready as the first start
                            # (which _start bounds): a plugin hanging in Initialize is stopped.
                            with trio.fail_after(ns.plugin.startup_timeout):
                                connection = await nursery.start(
                                    self._connect, target, None, None, None, ns, instance
                                )
                        except (GrpcError, PluginStartFailed, trio.TooSlowError) as exc:
                            if not started:
                                raise
                            log.error(
                                "namespace %r: restarted plugin failed to initialize: %s; "
                                "stopping it to try again",
                                ns.name,
                                exc or f"not ready within {ns.plugin.startup_timeout:g} s",
                            )
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(event.pid, signal.SIGTERM)
                            continue
                        if not started:
                            started = True
                            task_status.started()

    async def _run_remote(
        self, ns: NamespaceConfig, instance: Instance, *, task_status: trio.TaskStatus[None]
    ) -> None:
        tls = ns.plugin.tls
        assert tls is not None
        assert ns.plugin.endpoint is not None
        ctx = client_ssl_context(tls.ca, tls.cert, tls.key)
        # This instance's own plugin instance in the (shared, long-lived) remote service.
        session = uuid.uuid4().hex
        async with trio.open_nursery() as nursery:
            await nursery.start(
                self._connect, ns.plugin.endpoint, ctx, tls.server_hostname, session, ns, instance
            )
            task_status.started()

    async def _connect(
        self,
        target: str,
        ssl_context: Any,
        server_hostname: str | None,
        session: str | None,
        ns: NamespaceConfig,
        instance: Instance,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Channel to a plugin process or service: Initialize, then health-check and poll
        metrics until cancelled (the sidecar's crash cancels it; a restart opens a new one)."""
        with trio.CancelScope() as scope:
            async with open_channel(
                target, ssl_context=ssl_context, server_hostname=server_hostname
            ) as channel:
                client = GrpcClient(channel, session=session)
                instance.address = target
                instance.health = await self._initialize(client, ns)
                instance.up(client)
                self._report(instance, True)
                task_status.started(scope)
                await self._watch(ns, instance, client, remote=session is not None)

    async def _initialize(self, client: PluginClient, ns: NamespaceConfig) -> HealthCheckResponse:
        """Initialize, then one HealthCheck: PluginStartFailed unless both succeed."""
        try:
            # Read now, at each start: a reload after a secret's rotation sends the new value.
            credentials = self.config.resolve_credentials(ns)
        except ConfigError as exc:
            raise PluginStartFailed(f"namespace {ns.name!r}: {exc}") from None
        request = InitializeRequest(
            namespace=ns.name,
            backend_type=ns.plugin.name,
            config=pack(
                ConfigDocument(
                    values=Struct.from_dict(dict(ns.config)),
                    base_dir=str(self.config.config_dir or ""),
                )
            ),
            credentials=credentials,
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
                f"{self.config.locate_plugin_error(ns.name, response.error)}"
            )
        health = await client.health_check()
        if health.status == HealthCheckResponseStatus.UNHEALTHY:
            raise PluginStartFailed(
                f"namespace {ns.name!r}: plugin {ns.plugin.name!r} is unhealthy after "
                f"Initialize: {health.message}"
            )
        return health

    # -- while it runs: health and metrics ------------------------------------------------

    async def _watch(
        self, ns: NamespaceConfig, instance: Instance, client: PluginClient, remote: bool = False
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._poll_metrics, ns, instance, client)
            await self._health_loop(ns, instance, client, remote)

    async def _health_loop(
        self, ns: NamespaceConfig, instance: Instance, client: PluginClient, remote: bool
    ) -> None:
        """Every ``health_interval``: HealthCheck, and report the namespace's health.

        A remote service is reached over the network, so for it a failed check also marks
        the instance down (calls fail fast) until a check succeeds again; and a service that
        lost this proxy's session (it restarted) is initialized again. A sidecar's or
        in-process plugin's failures are seen directly (its exit, its exception)."""
        interval = ns.plugin.health_interval
        while True:
            await trio.sleep(interval)
            try:
                with trio.fail_after(max(interval, 1.0)):
                    health = await client.health_check()
                    if remote and health.details.get(SESSION_DETAIL) == "none":
                        log.warning(
                            "namespace %r: the remote plugin service has no instance for this "
                            "proxy (it restarted?); initializing it again",
                            ns.name,
                        )
                        instance.down("re-initializing the remote plugin")
                        health = await self._initialize(client, ns)
            except (GrpcError, PluginStartFailed, trio.TooSlowError) as exc:
                log.warning("namespace %r: health check failed: %s", ns.name, exc or "timed out")
                if remote:
                    instance.down(f"health check failed: {exc or 'timed out'}")
                    self._report(instance, False)
                continue
            instance.health = health
            if remote and instance.client is None and not instance.retiring:
                instance.up(client)
            self._report(instance, health.status != HealthCheckResponseStatus.UNHEALTHY)

    async def _poll_metrics(
        self, ns: NamespaceConfig, instance: Instance, client: PluginClient
    ) -> None:
        """Every ``health_interval``: fetch the plugin's interval metrics (RFC-008: the proxy
        polls; the plugin's counters reset on each fetch) into the instance's totals."""
        interval = ns.plugin.health_interval
        while True:
            await trio.sleep(interval)
            try:
                with trio.fail_after(max(interval, 1.0)):
                    instance.record_metrics(await client.metrics())
            except (GrpcError, trio.TooSlowError) as exc:
                log.debug("namespace %r: metrics poll failed: %s", ns.name, exc or "timed out")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
