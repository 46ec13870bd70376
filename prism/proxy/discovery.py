"""Discovery: what a namespace serves (``DescribeNamespace``) and which namespaces a caller may
use (``ListAccessibleNamespaces``), both on the front door's DataProxy service.

Both go through the call-level stages like Execute (authentication, audit, metrics: their
operation is recorded as ``DescribeNamespace`` / ``ListAccessibleNamespaces``) and answer only
with what the caller is authorized for (:mod:`prism.proxy.authz`):

- ``ListAccessibleNamespaces`` lists, by name in order, the namespaces whose access admits the
  caller for at least one operation; the others are left out.
- ``DescribeNamespace`` of a namespace the caller may not use is PERMISSION_DENIED ("caller
  may not use namespace NS"), as Execute there would be: hiding it behind NOT_FOUND would hide
  nothing, since Execute already tells the two apart. Of those it may use, only the operations
  it may call are listed. An unknown namespace is NOT_FOUND; one whose plugin is down is
  UNAVAILABLE.

Operations come from the plugin's own declarations: the SDK answers the reserved operation
``_prism.describe`` with each decorated operation's params, result and inbound types and
whether it streams. A plugin not built on the SDK does not answer it; then the names (and
features) its ``InitializeResponse.supported_operations`` listed are described, without types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from prism._proto.prism.plugin.v1 import PluginDescription
from prism._proto.prism.proxy.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    ListAccessibleNamespacesResponse,
    NamespaceSummary,
    OperationDescriptor,
)
from prism.grpc.wire.status import InvalidArgument, NotFound, Unavailable
from prism.hosting.client import PluginClient
from prism.hosting.instance import Instance, NamespaceRoute
from prism.proxy.authz import NamespaceAuthorizer
from prism.proxy.request import ANONYMOUS, REQUEST, Identity, RequestInfo

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall
    from prism.proxy.pipeline import Pipeline

__all__ = ["describe_namespace", "list_accessible_namespaces"]

DESCRIBE = "DescribeNamespace"
LIST = "ListAccessibleNamespaces"


def _info(call: ServerCall, operation: str, namespace: str = "") -> RequestInfo:
    info = call.state.get(REQUEST)
    if info is None:  # a DataProxyService without the call-level stages
        info = RequestInfo(call.peer, trio.current_time())
        call.state[REQUEST] = info
    info.namespace, info.operation = namespace, operation
    return info


def _identity(info: RequestInfo) -> Identity:
    return info.identity if info.identity is not None else ANONYMOUS


def list_accessible_namespaces(
    pipeline: Pipeline, call: ServerCall
) -> ListAccessibleNamespacesResponse:
    """The namespaces the caller may use, by name."""
    identity = _identity(_info(call, LIST))
    names = []
    for name, stages in sorted(pipeline.namespaces.items()):
        authorizer = stages.authorizer
        if not isinstance(authorizer, NamespaceAuthorizer) or authorizer.admits(identity):
            names.append(NamespaceSummary(name=name))
    return ListAccessibleNamespacesResponse(namespaces=names)


async def describe_namespace(
    pipeline: Pipeline, call: ServerCall, request: DescribeNamespaceRequest
) -> DescribeNamespaceResponse:
    """The operations of ``request.namespace`` the caller may call (module docstring).
    Cancellation cancels the question to the plugin."""
    name = request.namespace
    info = _info(call, DESCRIBE, name)
    if not name:
        raise InvalidArgument("namespace is required")
    stages = pipeline.namespaces.get(name)
    if stages is None:
        raise NotFound(f"unknown namespace {name!r}")
    authorizer = stages.authorizer
    if isinstance(authorizer, NamespaceAuthorizer):
        authorizer.admit(info)
    route = pipeline.router.route(name)
    instance = route.current
    client = instance.client if isinstance(instance, Instance) else None
    if client is None:
        raise Unavailable(f"the plugin for namespace {name!r} is unavailable")
    response = DescribeNamespaceResponse(
        namespace=name,
        plugin=route.config.plugin.name if isinstance(route, NamespaceRoute) else "",
        plugin_version=client.plugin_version,
    )
    identity = _identity(info)
    for operation in await _operations(client):
        if not isinstance(authorizer, NamespaceAuthorizer) or authorizer.permits(
            identity, operation.name
        ):
            response.operations.append(operation)
    return response


async def _operations(client: PluginClient) -> list[OperationDescriptor]:
    description: PluginDescription | None = await client.describe()
    if description is not None:
        return [
            OperationDescriptor(
                name=op.name,
                params_type=op.params_type,
                result_type=op.result_type,
                streaming=op.streaming,
                inbound_type=op.inbound_type,
                features=list(op.features),
            )
            for op in description.operations
        ]
    # Only names: "get", then "get:etag" for each feature (prism.sdk.contracts).
    operations: dict[str, OperationDescriptor] = {}
    for capability in client.supported_operations:
        operation, _, feature = capability.partition(":")
        descriptor = operations.setdefault(operation, OperationDescriptor(name=operation))
        if feature:
            descriptor.features.append(feature)
    return list(operations.values())
