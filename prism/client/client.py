"""Connecting to a Prism proxy, and the generic calls every helper is built on."""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

from prism import grpc as pg
from prism._proto.prism.proxy.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    ListAccessibleNamespacesRequest,
    ListAccessibleNamespacesResponse,
)
from prism.client import discovery
from prism.client._envelope import (
    EXECUTE,
    EXECUTE_STREAM,
    Params,
    decode_result,
    decode_stream_response,
    encode_request,
)
from prism.client.discovery import NamespaceDescription
from prism.client.keyvalue import KeyValue
from prism.client.log import Log
from prism.client.objects import Objects
from prism.client.pubsub import PubSub
from prism.client.sql import Sql
from prism.client.stream import Decode, OperationStream
from prism.grpc.wire.metadata import MetadataError, MetadataLike, validate

__all__ = ["Client", "connect"]

R = TypeVar("R")
T = TypeVar("T")
PathLike = str | os.PathLike[str]


@asynccontextmanager
async def connect(
    target: str,
    *,
    tls: bool = False,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    token: str | None = None,
    metadata: MetadataLike = (),
    compression: str | None = None,
    options: pg.ChannelOptions | None = None,
) -> AsyncIterator[Client]:
    """A client of the proxy at ``target`` (``host:port`` or ``unix:/path``) for the block.

    TLS is on with ``tls=True``, ``ca`` (the CA that signed the proxy's certificate; without
    it, the system's roots), ``cert``/``key`` (a client certificate: mTLS; ``cert`` may hold
    the key too) or a ready ``ssl_context``. ``server_hostname``: the name to verify in the
    proxy's certificate (default: the target's host). ``token`` is sent as ``authorization:
    Bearer <token>`` on every call (JWT authentication); ``metadata`` is sent on every call
    too. ``compression`` ("gzip", "deflate") compresses requests; ``options`` are the
    channel's (:class:`prism.grpc.ChannelOptions`).

    Connects on the first call; leaving the block cancels calls still running and closes the
    connection. Invalid metadata or a token that is not printable ASCII is a ``ValueError``
    here (the token's value is never shown).
    """
    calls_metadata = _default_metadata(token, metadata)
    if key is not None and cert is None:
        raise ValueError("a client key needs its certificate (cert=)")
    if ssl_context is None and (tls or ca is not None or cert is not None):
        ssl_context = pg.client_ssl_context(ca, cert, key)
    if compression is not None:
        options = dataclasses.replace(options or pg.ChannelOptions(), compression=compression)
    async with pg.open_channel(
        target, ssl_context=ssl_context, server_hostname=server_hostname, options=options
    ) as channel:
        yield Client(channel, calls_metadata, tls=ssl_context is not None)


def _default_metadata(token: str | None, metadata: MetadataLike) -> list[tuple[str, str | bytes]]:
    pairs = list(metadata)
    try:
        validate(pairs)
    except MetadataError as exc:
        raise ValueError(str(exc)) from None
    if token is not None:
        if not token or not token.isascii() or not token.isprintable() or token.strip() != token:
            raise ValueError("token must be non-empty printable ASCII without surrounding spaces")
        if any(k == "authorization" for k, _ in pairs):
            raise ValueError("give either token= or an authorization entry in metadata=")
        pairs.append(("authorization", f"Bearer {token}"))
    return pairs


class Client:
    """A connection to a Prism proxy (made by :func:`connect`).

    Typed helpers per namespace — :meth:`keyvalue`, :meth:`pubsub`, :meth:`sql` — and, for
    any operation a plugin serves, :meth:`execute` and :meth:`stream`. A failed call raises
    the :class:`prism.grpc.GrpcError` subclass of its status (``NotFound``, ``Aborted``, ...).

    Deadlines: every call is bounded by the caller's cancel scopes, as any Trio operation is
    (``trio.fail_after(2)`` raises ``TooSlowError``), and the deadline is sent to the proxy as
    ``grpc-timeout`` so it gives up too. ``client.with_timeout(seconds)`` is a view of the same
    connection whose calls each get that gRPC timeout: past it a call is cancelled and raises
    ``DeadlineExceeded``, the same exception as when the proxy or a plugin ran out of time.
    """

    def __init__(
        self,
        channel: pg.Channel,
        metadata: MetadataLike = (),
        *,
        tls: bool = False,
        timeout: float | None = None,
    ) -> None:
        #: The underlying gRPC channel, for other services on the proxy (health, reflection).
        self.channel = channel
        self._metadata = list(metadata)
        self._tls = tls
        #: Each unary call's gRPC timeout in seconds (None: only the caller's cancel scopes).
        self.timeout = timeout

    def __repr__(self) -> str:
        auth = any(k == "authorization" for k, _ in self._metadata)
        return (
            f"<prism.client.Client {self.channel.target} tls={self._tls}"
            f"{' authorization=<withheld>' if auth else ''}"
            f"{'' if self.timeout is None else f' timeout={self.timeout:g}'}>"
        )

    def with_timeout(self, timeout: float | None) -> Client:
        """This client (same connection, same metadata) with each unary call bounded by
        ``timeout`` seconds (``DeadlineExceeded`` past it); None removes the bound. Helpers
        made from the view (``view.keyvalue(...)``) use it too. Streams have their own
        ``timeout=`` (a subscription usually has none)."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        return Client(self.channel, self._metadata, tls=self._tls, timeout=timeout)

    def _call_metadata(self, extra: MetadataLike) -> MetadataLike:
        return [*self._metadata, *extra] if extra else self._metadata

    async def execute(
        self,
        namespace: str,
        operation: str,
        params: Params,
        result_type: type[R],
        *,
        request_metadata: Mapping[str, str] | None = None,
        metadata: MetadataLike = (),
    ) -> R:
        """Run one operation: ``params`` (a message, raw ``bytes``, or None) → the result as
        ``result_type`` (a message class, or ``bytes`` for a raw result).

        ``request_metadata`` is the request's own metadata map (what the plugin reads, e.g.
        memstore's ``get_raw`` key); ``metadata`` is gRPC metadata added to this call's.
        A result of another type than ``result_type`` raises ``Internal``. Bounded by the
        caller's cancel scopes and :attr:`timeout`; cancellation cancels the call on the wire.
        """
        request = encode_request(namespace, operation, params, request_metadata)
        response = await self.channel.unary_unary(
            EXECUTE, request, bytes, metadata=self._call_metadata(metadata), timeout=self.timeout
        )
        return decode_result(response, result_type)

    def stream(
        self,
        namespace: str,
        operation: str,
        params: Params,
        result_type: type[R],
        *,
        metadata: MetadataLike = (),
        timeout: float | None = None,
    ) -> OperationStream[R]:
        """A stream operation's results: ``async for result in client.stream(...)`` (see
        :class:`OperationStream`; ``send`` passes further requests for operations that take
        them). ``timeout`` (seconds) bounds the whole stream: ``DeadlineExceeded`` past it;
        the caller's cancel scopes bound it as well. The view's :attr:`timeout` does not apply
        (it is for unary calls)."""

        def decode(response: bytes) -> tuple[R | None, bool]:
            return decode_stream_response(response, result_type)

        return self._stream(namespace, operation, params, decode, metadata, timeout)

    def _stream(
        self,
        namespace: str,
        operation: str,
        params: Params,
        decode: Decode[T],
        metadata: MetadataLike = (),
        timeout: float | None = None,
    ) -> OperationStream[T]:
        call = self.channel.stream(
            EXECUTE_STREAM, bytes, metadata=self._call_metadata(metadata), timeout=timeout
        )
        return OperationStream(call, encode_request(namespace, operation, params), decode)

    async def describe(self, namespace: str) -> NamespaceDescription:
        """What ``namespace`` serves: each operation the caller may call, with its params and
        result types and whether it streams (see docs/client.md, "Discovery").
        ``PermissionDenied`` for a namespace the caller may not use, ``NotFound`` for an
        unknown one. Bounded by the caller's cancel scopes and :attr:`timeout`."""
        response = await self.channel.unary_unary(
            discovery.DESCRIBE,
            DescribeNamespaceRequest(namespace=namespace),
            DescribeNamespaceResponse,
            metadata=self._metadata,
            timeout=self.timeout,
        )
        return NamespaceDescription.from_message(response)

    async def namespaces(self) -> list[str]:
        """The names of the namespaces the caller may use, in order."""
        response = await self.channel.unary_unary(
            discovery.LIST,
            ListAccessibleNamespacesRequest(),
            ListAccessibleNamespacesResponse,
            metadata=self._metadata,
            timeout=self.timeout,
        )
        return [ns.name for ns in response.namespaces]

    def keyvalue(self, namespace: str) -> KeyValue:
        """The key-value operations of ``namespace`` (``prism.data.v1``'s contract)."""
        return KeyValue(self, namespace)

    def pubsub(self, namespace: str) -> PubSub:
        """Publish and subscribe on ``namespace``."""
        return PubSub(self, namespace)

    def log(self, namespace: str) -> Log:
        """Produce and consume on ``namespace`` (the ``log`` contract)."""
        return Log(self, namespace)

    def objects(self, namespace: str, bucket: str = "") -> Objects:
        """Objects of ``namespace`` (the ``object`` contract); ``bucket`` "" = the plugin's."""
        return Objects(self, namespace, bucket)

    def sql(self, namespace: str) -> Sql:
        """SQL statements on ``namespace`` (the ``sql`` contract)."""
        return Sql(self, namespace)
