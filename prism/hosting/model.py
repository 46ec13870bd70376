"""What the three deployment models share: Initialize, the health loop that decides routing, the
metrics poller, and the settings they are built from.

Each model (:mod:`~prism.hosting.in_process`, :mod:`~prism.hosting.sidecar`,
:mod:`~prism.hosting.remote`) is one object per plugin instance with one method,
``async def run(*, task_status)``: it holds the model's resources (a sidecar's runtime directory
and processes, say) and runs :func:`prism.hosting.supervisor.supervise` over its ``attempt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
from prism.config import ConfigError, NamespaceConfig, ProxyConfig
from prism.grpc.channel import ChannelOptions
from prism.grpc.wire.status import GrpcError
from prism.hosting.client import PluginClient
from prism.hosting.instance import Instance
from prism.hosting.supervisor import PluginFailed
from prism.hosting.verify import VerifyPolicy
from prism.plugin_protocol import SESSION_DETAIL
from prism.sdk.typed import pack

log = logging.getLogger("prism.hosting")

#: Shortest time a health check gets to answer (``health_interval`` when that is longer).
MIN_HEALTH_TIMEOUT = 2.0


class PluginStartFailed(Exception):
    """A namespace's plugin could not be started; the message says which and why."""


@dataclass(frozen=True)
class HostSettings:
    """What every model needs from the proxy's configuration."""

    config: ProxyConfig
    policy: VerifyPolicy

    def channel_options(self) -> ChannelOptions:
        """The proxy → plugin channel: the proxy's ``max_message_size`` both ways, so what a
        client may send through the front door fits through this hop too."""
        size = self.config.max_message_size
        return ChannelOptions(max_receive_message_size=size, max_send_message_size=size)


def describe_plugin(ns: NamespaceConfig) -> str:
    return f"namespace {ns.name!r}: plugin {ns.plugin.name!r}"


def health_timeout(ns: NamespaceConfig) -> float:
    return max(ns.plugin.health_interval, MIN_HEALTH_TIMEOUT)


async def initialize(
    client: PluginClient, ns: NamespaceConfig, config: ProxyConfig
) -> HealthCheckResponse:
    """Initialize, then one HealthCheck: PluginStartFailed unless both succeed (a plugin
    UNHEALTHY straight after Initialize is not routed to)."""
    try:
        # Read now, at each start: a reload after a secret's rotation sends the new value.
        credentials = config.resolve_credentials(ns)
    except ConfigError as exc:
        raise PluginStartFailed(f"namespace {ns.name!r}: {exc}") from None
    request = InitializeRequest(
        namespace=ns.name,
        backend_type=ns.plugin.name,
        config=pack(
            ConfigDocument(
                values=Struct.from_dict(dict(ns.config)),
                base_dir=str(config.config_dir or ""),
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
            f"{describe_plugin(ns)} refused to initialize: "
            f"{config.locate_plugin_error(ns.name, response.error)}"
        )
    health = await client.health_check()
    if health.status == HealthCheckResponseStatus.UNHEALTHY:
        raise PluginStartFailed(
            f"{describe_plugin(ns)} is unhealthy after Initialize: {health.message}"
        )
    return health


async def watch(
    ns: NamespaceConfig, instance: Instance, client: PluginClient, *, remote: bool = False
) -> None:
    """While the instance serves: its health loop and its metrics poller. Raises
    :class:`PluginFailed` when the plugin must leave routing (the supervisor restarts it)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_poll_metrics, ns, instance, client)
        await _health_loop(ns, instance, client, remote)


async def _health_loop(
    ns: NamespaceConfig, instance: Instance, client: PluginClient, remote: bool
) -> None:
    """Every ``health_interval``: HealthCheck. HEALTHY and DEGRADED stay routed (DEGRADED shows
    in the admin status); UNHEALTHY, no answer within the health timeout, or a failed call
    take the instance out of routing at once and end this attempt. A remote service that lost
    this proxy's session (it restarted) ends it too: the next attempt initializes again."""
    interval = ns.plugin.health_interval
    timeout = health_timeout(ns)
    while True:
        await trio.sleep(interval)
        try:
            with trio.fail_after(timeout):
                health = await client.health_check()
        except trio.TooSlowError:
            reason = f"health check not answered within {timeout:g} s"
        except GrpcError as exc:
            reason = f"health check failed: {exc}"
        else:
            instance.health = health
            if remote and health.details.get(SESSION_DETAIL) == "none":
                reason = "the remote plugin service has no instance for this proxy (it restarted?)"
            elif health.status == HealthCheckResponseStatus.UNHEALTHY:
                reason = f"the plugin reported UNHEALTHY: {health.message or 'no reason given'}"
            else:
                continue
        await trio.lowlevel.checkpoint_if_cancelled()  # a call cut short by our own stop
        instance.down(reason)
        log.warning("%s: %s; taken out of routing", describe_plugin(ns), reason)
        raise PluginFailed(reason)


async def _poll_metrics(ns: NamespaceConfig, instance: Instance, client: PluginClient) -> None:
    """Every ``health_interval``: fetch the plugin's interval metrics (RFC-008: the proxy
    polls; the plugin's counters reset on each fetch) into the instance's totals."""
    interval = ns.plugin.health_interval
    while True:
        await trio.sleep(interval)
        try:
            with trio.fail_after(health_timeout(ns)):
                instance.record_metrics(await client.metrics())
        except (GrpcError, trio.TooSlowError) as exc:
            log.debug("namespace %r: metrics poll failed: %s", ns.name, exc or "timed out")
