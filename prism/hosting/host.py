"""The plugin host: one nursery scope per plugin instance, a route per namespace.

::

    PluginHost.run ── host nursery
       └─ one task per instance: its scope holds its deployment model (in_process, sidecar,
          remote: one module each), which runs the one restart loop (supervisor.supervise)
          over it: start, Initialize, route, health loop and metrics poller, and again after a
          failure. Cancelling the scope = Shutdown, reap, close. Nothing outlives it.

An instance that fails after it started (a crash, an UNHEALTHY answer or a health check not
answered in time, a lost remote service) is taken out of routing at once — calls get
UNAVAILABLE with the reason — and started again with backoff, re-Initialized before it is
routed to. A remote service that cannot be reached when the proxy starts does not stop the
proxy: its namespace starts NOT_SERVING and the host keeps reconnecting.

Hot reload (:meth:`PluginHost.reload`): start the new instance and wait until it is
Initialized and healthy, switch the namespace's route atomically, let the old instance's
in-flight calls finish within ``drain_grace``, send it Shutdown, then cancel its scope.

Stopping (cancelling :meth:`PluginHost.run`) sends every instance Shutdown, all at once and
each within its ``drain_grace``, then cancels their scopes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import trio

from prism._proto.prism.plugin.v1 import PluginMetrics
from prism.config import NamespaceConfig, ProxyConfig
from prism.grpc.wire.status import GrpcError, NotFound
from prism.hosting import runtime_dirs
from prism.hosting.in_process import InProcessModel
from prism.hosting.instance import HostEvents, Instance, MetricsTotals, NamespaceRoute, NoEvents
from prism.hosting.model import HostSettings, PluginStartFailed, describe_plugin
from prism.hosting.remote import RemoteModel
from prism.hosting.sidecar import SidecarModel
from prism.hosting.supervisor import describe
from prism.hosting.verify import VerifyPolicy

log = logging.getLogger("prism.hosting")

__all__ = [
    "HostEvents",
    "Instance",
    "MetricsTotals",
    "NamespaceRoute",
    "PluginHost",
    "PluginStartFailed",
]

StatusCallback = Callable[[str, bool], None]
Model = InProcessModel | SidecarModel | RemoteModel

#: Beyond a plugin's own grace, for Shutdown's round trip and its process's exit.
SHUTDOWN_MARGIN = 1.0


class PluginHost:
    def __init__(
        self,
        config: ProxyConfig,
        on_status: StatusCallback | None = None,
        events: HostEvents | None = None,
    ) -> None:
        """``on_status(namespace, serving)``: a namespace's health changed. ``events``: hears
        of metrics polls, restarts and reloads (the proxy's metrics)."""
        self.config = config
        self.events: HostEvents = events if events is not None else NoEvents()
        self.routes: dict[str, NamespaceRoute] = {}
        self._nursery: trio.Nursery | None = None
        self._generations = itertools.count(1)
        self._instances: set[Instance] = set()  # every instance whose scope is open
        self._on_status = on_status or (lambda namespace, serving: None)
        sec = config.plugin_security
        self.settings = HostSettings(
            config,
            VerifyPolicy.from_config(
                require_signature=sec.require_signatures,
                trusted_keys=sec.trusted_keys,
                check_permissions=sec.verify_permissions,
            ),
        )
        self.models: dict[Instance, Model] = {}

    @property
    def policy(self) -> VerifyPolicy:
        return self.settings.policy

    def route(self, namespace: str) -> NamespaceRoute:
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
        """Start every namespace's plugin (failures raise PluginStartFailed; an unreachable
        remote service does not: its namespace starts NOT_SERVING), report started, then keep
        them running until cancelled. Cancellation sends every instance Shutdown (shielded,
        each bounded by its ``drain_grace``) and then stops them."""
        if any(ns.plugin.mode == "sidecar" for ns in self.config.namespaces):
            runtime_dirs.remove_stale(self.config.runtime_dir)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for ns in self.config.namespaces:
                    route = NamespaceRoute(ns)
                    self.routes[ns.name] = route
                    route.current = await self._start(ns, start_unreachable=True)
                    self._report(route.current)
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
            begun = trio.current_time()
            try:
                new = await self._start(new_config)
            except PluginStartFailed:
                self.events.plugin_reloaded(namespace, False)
                raise
            self.events.plugin_reloaded(namespace, True)
            old, route.current, route.config = route.current, new, new_config
            self._report(new)
            log.info(
                "namespace %r now served by instance %d (%s), started in %.2f s",
                namespace,
                new.generation,
                new.mode,
                trio.current_time() - begun,
            )
            if old is not None:
                retiring = trio.current_time()
                await self._retire(old, new_config.plugin.drain_grace, "hot reload")
                log.info(
                    "namespace %r: instance %d retired in %.2f s",
                    namespace,
                    old.generation,
                    trio.current_time() - retiring,
                )
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
        """Shutdown, then cancel the instance's scope. Not cancellable. The plugin's whole
        shutdown (draining, its ``shutdown`` hook, its tasks) fits in ``grace``
        (``Engine.aclose``), so this waits ``grace`` plus a margin for the round trip."""
        instance.retiring = True
        client = instance.client
        if client is not None:
            with trio.move_on_after(grace + SHUTDOWN_MARGIN):
                try:
                    await client.shutdown(grace, reason)
                except GrpcError as exc:
                    log.info("Shutdown of instance %d failed: %s", instance.generation, exc)
        instance.scope.cancel()

    def _model(self, ns: NamespaceConfig, instance: Instance, start_unreachable: bool) -> Model:
        if ns.plugin.mode == "in_process":
            return InProcessModel(self.settings, ns, instance)
        if ns.plugin.mode == "sidecar":
            return SidecarModel(self.settings, ns, instance)
        return RemoteModel(self.settings, ns, instance, start_unreachable=start_unreachable)

    async def _start(self, ns: NamespaceConfig, *, start_unreachable: bool = False) -> Instance:
        if self._nursery is None:
            raise RuntimeError("the plugin host is not running")
        instance = Instance(
            ns.name, ns.plugin.mode, next(self._generations), self._report, self.events
        )
        what = describe_plugin(ns)
        try:
            model = self._model(ns, instance, start_unreachable)
            await self._nursery.start(self._instance_scope, model, instance)
        except Exception as exc:
            if any(isinstance(leaf, trio.TooSlowError) for leaf in _leaves(exc)):
                raise PluginStartFailed(
                    f"{what} did not become ready within {ns.plugin.startup_timeout:g} s"
                ) from None
            leaves = _leaves(exc)
            if len(leaves) == 1 and isinstance(leaves[0], PluginStartFailed):
                raise leaves[0] from None
            raise PluginStartFailed(f"{what} failed to start: {describe(exc)}") from exc
        if not instance.available:
            log.error("%s is not serving: %s; retrying", what, instance.down_reason)
        return instance

    async def _instance_scope(
        self,
        model: Model,
        instance: Instance,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._instances.add(instance)
        self.models[instance] = model
        with instance.scope:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(model.run)
                    # From now on only this instance's own scope stops it: not the host's
                    # cancellation, which must first send it Shutdown (see run()).
                    instance.scope.shield = True
                    task_status.started()
            finally:
                self._instances.discard(instance)
                self.models.pop(instance, None)
                instance.retiring = True
                instance.down("stopped")
                instance.pid = None

    def _report(self, instance: Instance) -> None:
        """Health status of a namespace follows its current instance only (not one that is
        starting for a reload or draining after one)."""
        route = self.routes.get(instance.namespace)
        if route is not None and route.current is instance:
            self._on_status(instance.namespace, instance.available)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
