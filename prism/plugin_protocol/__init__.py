"""What both sides of the plugin protocol share: the proxy's side (``prism.hosting``) and the
plugin's side (``prism.sdk``) import this package, and it imports neither.

- :mod:`prism.plugin_protocol.handshake`: how a sidecar is launched and announces its socket,
  and how the two sides agree on a protocol version.
- the names below: the gRPC service, the metadata and health details a remote plugin service's
  sessions travel in, and the operation names reserved for the host (the front door refuses
  them from clients; only the host calls them, over its own path).
"""

from __future__ import annotations

__all__ = [
    "METRICS_OPERATION",
    "RESERVED_OPERATION_PREFIX",
    "SERVICE_NAME",
    "SESSION_DETAIL",
    "SESSION_METADATA",
    "is_reserved_operation",
]

#: The plugin protocol's gRPC service (protos/prism/plugin/v1).
SERVICE_NAME = "prism.plugin.v1.BackendPlugin"

#: Operation names with this prefix belong to the host, never to a client.
RESERVED_OPERATION_PREFIX = "_prism."
#: The plugin's interval metrics (the RFC has no metrics call): fetching them resets them.
METRICS_OPERATION = RESERVED_OPERATION_PREFIX + "metrics"

#: Metadata naming a proxy's plugin instance in a remote plugin service.
SESSION_METADATA = "prism-plugin-session"
#: HealthCheckResponse.details key; the value "none" = the service has no such session.
SESSION_DETAIL = "prism.session"


def is_reserved_operation(name: str) -> bool:
    return name.startswith(RESERVED_OPERATION_PREFIX)
