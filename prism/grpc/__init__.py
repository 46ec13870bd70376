"""prism.grpc: a pure-Python gRPC stack over h2 on Trio. See docs/grpc-api.md."""

from __future__ import annotations

from prism.grpc.call import ServerCall
from prism.grpc.channel import Channel, ChannelOptions, ClientCall, open_channel
from prism.grpc.server import Server, ServerOptions
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

__all__ = [
    "Aborted",
    "AlreadyExists",
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
    "ServerOptions",
    "Service",
    "Status",
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
