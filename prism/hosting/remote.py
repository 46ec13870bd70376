"""The remote deployment model: a long-lived plugin service elsewhere (``prism plugin serve``),
reached over TCP with mTLS. This proxy instance has a plugin instance of its own in it, a
session (see :mod:`prism.sdk.grpc_service`), which survives reconnections.

Each attempt connects, makes sure the session exists and is healthy (Initialize if the service
has none: it restarted, or this is the first attempt), routes, and then watches the connection
(a ``grpc.health.v1`` Watch stream, which ends the moment the connection does) beside the health
loop. A service that cannot be reached is not a reason to stop the proxy: the namespace is
NOT_SERVING, calls get UNAVAILABLE with the reason (``certificate verify failed: unknown CA``,
``connection refused``, ...), and the host reconnects with a backoff capped at
:data:`~prism.hosting.supervisor.RECONNECT_BACKOFF`'s maximum.

With several ``endpoints`` each one is run that way, as an instance of its own under its own
restart loop, and the namespace's instance routes through a :class:`~prism.hosting.balancer.
Balancer` over them: it serves while any endpoint does. A failed connection attempt counts
towards that endpoint's ejection (:mod:`prism.hosting.outlier`).
"""

from __future__ import annotations

import logging
import uuid

import trio

from prism._proto.grpc.health.v1 import HealthCheckRequest as WatchRequest
from prism._proto.grpc.health.v1 import HealthCheckResponse as WatchResponse
from prism._proto.prism.plugin.v1 import HealthCheckResponse, HealthCheckResponseStatus
from prism.config import NamespaceConfig
from prism.grpc.channel import Channel, open_channel
from prism.grpc.transport import client_ssl_context
from prism.grpc.wire.status import GrpcError
from prism.hosting.balancer import Balancer, EndpointInstance
from prism.hosting.client import GrpcClient
from prism.hosting.instance import Instance
from prism.hosting.model import HostSettings, describe_plugin, initialize, watch
from prism.hosting.supervisor import RECONNECT_BACKOFF, PluginUnreachable, supervise
from prism.plugin_protocol import SESSION_DETAIL

log = logging.getLogger("prism.hosting")

WATCH = "/grpc.health.v1.Health/Watch"


class RemoteModel:
    mode = "remote"

    def __init__(
        self,
        settings: HostSettings,
        ns: NamespaceConfig,
        instance: Instance,
        *,
        start_unreachable: bool = False,
    ) -> None:
        """``start_unreachable``: report started even when the service cannot be reached (the
        proxy's start); a reload waits for a reachable service instead."""
        tls = ns.plugin.tls
        addresses = ns.plugin.addresses
        if tls is None or not addresses:
            raise ValueError(f"namespace {ns.name!r}: a remote plugin needs endpoint and tls")
        self.settings = settings
        self.ns = ns
        self.instance = instance
        self.endpoint = addresses[0]
        #: Several endpoints: the namespace instance's client, over one instance per endpoint.
        self.balancer = (
            Balancer(instance, addresses, ns.plugin.outlier_detection)
            if len(addresses) > 1
            else None
        )
        self.server_hostname = tls.server_hostname
        self.ssl_context = client_ssl_context(tls.ca, tls.cert, tls.key)
        self.start_unreachable = start_unreachable
        # This instance's own plugin instance in the (shared, long-lived) remote service.
        self.session = uuid.uuid4().hex

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.balancer is not None:
            await self._run_balanced(self.balancer, task_status=task_status)
            return
        await supervise(
            self.attempt,
            self.instance,
            what=describe_plugin(self.ns),
            startup_timeout=self.ns.plugin.startup_timeout,
            backoff=RECONNECT_BACKOFF,
            start_unreachable=self.start_unreachable,
            task_status=task_status,
        )

    async def _run_balanced(
        self, balancer: Balancer, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Every endpoint's restart loop, started together; started once each has served or
        failed its first attempt. A reload (not ``start_unreachable``) wants one serving."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(balancer.run)
                async with trio.open_nursery() as starting:
                    for endpoint in balancer.endpoints:
                        starting.start_soon(nursery.start, self._supervise_endpoint, endpoint)
                if not self.start_unreachable and not self.instance.available:
                    raise PluginUnreachable(self.instance.down_reason)
                task_status.started()
        finally:
            # Their loops were cancelled (which marks nothing): none is served from now on.
            for endpoint in balancer.endpoints:
                endpoint.retiring = True
                endpoint.down("stopped")

    async def _supervise_endpoint(
        self, endpoint: EndpointInstance, *, task_status: trio.TaskStatus[None]
    ) -> None:
        async def attempt(number: int, *, task_status: trio.TaskStatus[None]) -> None:
            try:
                await self._attempt(endpoint.address or "", endpoint, task_status=task_status)
            except Exception:
                assert self.balancer is not None
                self.balancer.failed(endpoint)
                raise

        await supervise(
            attempt,
            endpoint,
            what=f"{describe_plugin(self.ns)} at {endpoint.address}",
            startup_timeout=self.ns.plugin.startup_timeout,
            backoff=RECONNECT_BACKOFF,
            start_unreachable=True,
            task_status=task_status,
        )

    async def attempt(self, number: int, *, task_status: trio.TaskStatus[None]) -> None:
        await self._attempt(self.endpoint, self.instance, task_status=task_status)

    async def _attempt(
        self, endpoint: str, instance: Instance, *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with open_channel(
            endpoint,
            ssl_context=self.ssl_context,
            server_hostname=self.server_hostname,
            options=self.settings.channel_options(),
        ) as channel:
            client = GrpcClient(channel, session=self.session)
            instance.address = endpoint
            try:
                await channel.connection()
                health = await self._ensure_session(client, instance)
            except GrpcError as exc:
                raise PluginUnreachable(
                    f"cannot reach the remote plugin at {endpoint}: {exc.message or exc}"
                ) from None
            instance.up(client, health)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_connection, channel, endpoint, instance)
                await watch(self.ns, instance, client, remote=True)

    async def _ensure_session(self, client: GrpcClient, instance: Instance) -> HealthCheckResponse:
        """This proxy's session in the service, healthy: kept across reconnections when the
        service still has it, initialized when it has none, replaced when it is UNHEALTHY."""
        health = await client.health_check()
        if health.details.get(SESSION_DETAIL) == "none":
            if instance.restarts:
                log.warning(
                    "%s: the remote plugin service has no instance for this proxy (it "
                    "restarted?); initializing it again",
                    describe_plugin(self.ns),
                )
            return await initialize(client, self.ns, self.settings.config)
        if health.status == HealthCheckResponseStatus.UNHEALTHY:
            grace = self.ns.plugin.drain_grace
            with trio.move_on_after(grace):
                await client.shutdown(grace, "restarting an unhealthy plugin instance")
            return await initialize(client, self.ns, self.settings.config)
        return health

    async def _watch_connection(self, channel: Channel, endpoint: str, instance: Instance) -> None:
        """End the attempt the moment the connection to the service is lost, rather than at the
        next health check: a ``grpc.health.v1`` Watch stream fails when the connection does."""
        try:
            async with channel.stream(WATCH, WatchResponse) as call:
                await call.send_message(WatchRequest(service=""))
                await call.end()
                async for _ in call:
                    pass
            message = "the remote plugin service ended its health watch"
        except GrpcError as exc:
            message = f"connection to the remote plugin at {endpoint} lost: {exc.message}"
        # Being stopped closes the connection too: that is no failure to report.
        await trio.lowlevel.checkpoint_if_cancelled()
        instance.down(message)
        raise PluginUnreachable(message)
