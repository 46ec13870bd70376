"""prism.client: a Trio client of the Prism proxy. See docs/client.md.

::

    async with prism.client.connect("127.0.0.1:50051") as client:
        kv = client.keyvalue("kv")
        await kv.set("greeting", b"hello", ttl=60)
        print((await kv.get("greeting")).value)

Typed helpers for the data model's contracts (:class:`KeyValue`, :class:`PubSub`,
:class:`Sql`, :class:`Log`, :class:`Objects`) and, for any other operation,
:meth:`Client.execute` and :meth:`Client.stream`, all over ``prism.proxy.v1.DataProxy``
(``Execute``, ``ExecuteStream``) on a :mod:`prism.grpc` channel. Failed calls raise the
:class:`GrpcError` of their status (re-exported here from :mod:`prism.grpc`).
"""

from __future__ import annotations

from prism.client.client import Client, connect
from prism.client.discovery import NamespaceDescription, OperationInfo
from prism.client.keyvalue import DeleteItem, GetResult, ItemResult, KeyValue, SetItem
from prism.client.log import Consumer, Log, Position, Record
from prism.client.objects import ObjectInfo, ObjectPage, ObjectReader, Objects, PutResult
from prism.client.pubsub import Message, PubSub
from prism.client.sql import Json, QueryResult, Sql
from prism.client.stream import OperationStream
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
    "Client",
    "Consumer",
    "DataLoss",
    "DeadlineExceeded",
    "DeleteItem",
    "FailedPrecondition",
    "GetResult",
    "GrpcError",
    "Internal",
    "InvalidArgument",
    "ItemResult",
    "Json",
    "KeyValue",
    "Log",
    "Message",
    "NamespaceDescription",
    "NotFound",
    "ObjectInfo",
    "ObjectPage",
    "ObjectReader",
    "Objects",
    "OperationInfo",
    "OperationStream",
    "OutOfRange",
    "PermissionDenied",
    "Position",
    "PubSub",
    "PutResult",
    "QueryResult",
    "Record",
    "ResourceExhausted",
    "SetItem",
    "Sql",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "connect",
]
