"""prism.grpc: a pure-Python gRPC stack over h2 on Trio. See docs/grpc-api.md.

The Trio parts are imported on first use, so that ``import prism.grpc.wire`` (sans-IO) never
loads trio, ssl or socket.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prism.grpc.wire.metadata import Metadata, MetadataLike
from prism.grpc.wire.status import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    GrpcError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Status,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall
    from prism.grpc.call_handles import StreamCall, UnaryCall
    from prism.grpc.channel import Channel, ChannelOptions, open_channel
    from prism.grpc.client_call import ClientCall
    from prism.grpc.interceptor import CallKey, CallOutcome, CallState, ServerInterceptor
    from prism.grpc.server import Server, ServerCounters, ServerOptions
    from prism.grpc.service import (
        Cardinality,
        RpcMethod,
        Service,
        stream_stream,
        stream_unary,
        unary_stream,
        unary_unary,
    )
    from prism.grpc.transport import PeerInfo, client_ssl_context, server_ssl_context

_LAZY = {
    "ServerCall": "call",
    "Channel": "channel",
    "ChannelOptions": "channel",
    "ClientCall": "client_call",
    "StreamCall": "call_handles",
    "UnaryCall": "call_handles",
    "open_channel": "channel",
    "CallKey": "interceptor",
    "CallOutcome": "interceptor",
    "CallState": "interceptor",
    "ServerInterceptor": "interceptor",
    "Server": "server",
    "ServerCounters": "server",
    "ServerOptions": "server",
    "Cardinality": "service",
    "RpcMethod": "service",
    "Service": "service",
    "stream_stream": "service",
    "stream_unary": "service",
    "unary_stream": "service",
    "unary_unary": "service",
    "PeerInfo": "transport",
    "client_ssl_context": "transport",
    "server_ssl_context": "transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prism.grpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"prism.grpc.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Aborted",
    "AlreadyExists",
    "CallKey",
    "CallOutcome",
    "CallState",
    "Cancelled",
    "Cardinality",
    "Channel",
    "ChannelOptions",
    "ClientCall",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GrpcError",
    "Internal",
    "InvalidArgument",
    "Metadata",
    "MetadataLike",
    "NotFound",
    "OutOfRange",
    "PeerInfo",
    "PermissionDenied",
    "ResourceExhausted",
    "RpcMethod",
    "Server",
    "ServerCall",
    "ServerCounters",
    "ServerInterceptor",
    "ServerOptions",
    "Service",
    "Status",
    "StreamCall",
    "UnaryCall",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "client_ssl_context",
    "open_channel",
    "server_ssl_context",
    "stream_stream",
    "stream_unary",
    "unary_stream",
    "unary_unary",
]
