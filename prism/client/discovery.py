"""Discovery: what a namespace serves, and which namespaces the caller may use.

``await client.describe("kv")`` and ``await client.namespaces()`` (see :class:`Client`), over
``DataProxy.DescribeNamespace`` and ``DataProxy.ListAccessibleNamespaces``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism._proto.prism.proxy.v1 import DescribeNamespaceResponse

__all__ = ["NamespaceDescription", "OperationInfo"]

DESCRIBE = "/prism.proxy.v1.DataProxy/DescribeNamespace"
LIST = "/prism.proxy.v1.DataProxy/ListAccessibleNamespaces"


@dataclass(frozen=True, slots=True)
class OperationInfo:
    """One operation: its payload types as full protobuf names ("prism.data.v1.GetRequest"),
    "bytes" for raw payloads, "" where the plugin does not say."""

    name: str
    params_type: str
    result_type: str
    #: Called with :meth:`Client.stream` (True) or :meth:`Client.execute`.
    streaming: bool
    #: Streams: the type of further requests (``send``), "" when none are taken.
    inbound_type: str
    #: Optional features it implements ("etag", "ttl").
    features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NamespaceDescription:
    """A namespace as the caller may use it: only operations it may call are listed."""

    namespace: str
    plugin: str
    plugin_version: str
    operations: tuple[OperationInfo, ...]

    def operation(self, name: str) -> OperationInfo:
        """The operation ``name``; KeyError when it is not listed."""
        for op in self.operations:
            if op.name == name:
                return op
        raise KeyError(name)

    @classmethod
    def from_message(cls, message: DescribeNamespaceResponse) -> NamespaceDescription:
        return cls(
            message.namespace,
            message.plugin,
            message.plugin_version,
            tuple(
                OperationInfo(
                    op.name,
                    op.params_type,
                    op.result_type,
                    op.streaming,
                    op.inbound_type,
                    tuple(op.features),
                )
                for op in message.operations
            ),
        )
