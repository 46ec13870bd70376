"""Typed helpers for the object contract (``prism.data.v1``'s object.proto): objects of any size
put and read as streams of chunks, never whole in memory unless the caller asks for it."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING

from prism._proto.prism.data.v1 import (
    DeleteObjectRequest,
    DeleteObjectResponse,
    GetObjectHeader,
    GetObjectRequest,
    HeadObjectRequest,
    ListObjectsRequest,
    ListObjectsResponse,
    PutObjectRequest,
    PutObjectResponse,
)
from prism._proto.prism.data.v1 import ObjectInfo as ObjectInfoMessage
from prism.client._envelope import decode_stream_response
from prism.client.stream import OperationStream
from prism.grpc.wire.status import Internal

if TYPE_CHECKING:
    from prism.client.client import Client

__all__ = ["ObjectInfo", "ObjectPage", "ObjectReader", "Objects", "PutResult"]

#: The size of the chunks ``put`` cuts ``bytes`` into (well under a message's 4 MiB default).
DEFAULT_CHUNK = 1 << 20

Data = bytes | Iterable[bytes] | AsyncIterable[bytes] | IO[bytes]


def _known_size(data: Data) -> int | None:
    """The number of bytes ``data`` holds, when that is known before reading it: bytes, or a
    regular file (from its position to its end). The plugin streams a put of known size part
    by part to the backend instead of holding each part."""
    if isinstance(data, bytes | bytearray | memoryview):
        return memoryview(data).nbytes
    fileno = getattr(data, "fileno", None)
    if fileno is None or not callable(getattr(data, "tell", None)):
        return None
    try:
        status = os.fstat(fileno())
        position = data.tell()  # type: ignore[union-attr]
    except (OSError, ValueError):  # not a real file (io.BytesIO), or closed
        return None
    return status.st_size - position if stat.S_ISREG(status.st_mode) else None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A stored object. ``content_type`` and ``metadata`` are empty in a listing (S3 lists
    neither: ``head`` has them)."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None

    @classmethod
    def from_message(cls, message: ObjectInfoMessage) -> ObjectInfo:
        return cls(
            message.bucket,
            message.key,
            message.size,
            message.etag,
            message.content_type,
            dict(message.metadata),
            message.last_modified,
        )


@dataclass(frozen=True, slots=True)
class PutResult:
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class ObjectPage:
    """One page of a listing; ``next_page_token`` is "" on the last."""

    objects: list[ObjectInfo]
    next_page_token: str


def _raw(response: bytes) -> tuple[bytes | None, bool]:
    return decode_stream_response(response, bytes)


def _put_result(response: bytes) -> tuple[PutResult | None, bool]:
    proto, final = decode_stream_response(response, PutObjectResponse)
    return (None if proto is None else PutResult(proto.size, proto.etag)), final


class ObjectReader:
    """An object being read (``objects.get``): :attr:`info` and the range once the block is
    entered, then the bytes chunk by chunk::

        async with objects.get("videos/a.mp4", offset=0, length=1 << 20) as reader:
            print(reader.info.size, reader.offset, reader.length)
            async for chunk in reader:
                out.write(chunk)

    Leaving the block before the end cancels the stream (the plugin stops reading from the
    backend). ``NotFound`` (no such object) and ``OutOfRange`` (a range past the end) are
    raised when the block is entered.
    """

    def __init__(self, stream: OperationStream[bytes]) -> None:
        self._stream = stream
        self._header: GetObjectHeader | None = None

    async def __aenter__(self) -> ObjectReader:
        await self._stream.__aenter__()
        try:
            first = await self._stream.receive()
            if first is None:
                raise Internal("get_object ended without its header")
            self._header = GetObjectHeader.parse(first)
        except BaseException:
            self._stream.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stream.__aexit__(exc_type, exc, tb)

    def _got(self) -> GetObjectHeader:
        if self._header is None:
            raise RuntimeError("use the reader inside `async with`")
        return self._header

    @property
    def info(self) -> ObjectInfo:
        """The whole object's info (its ``size`` is the whole object's, not the range's)."""
        info = self._got().info
        if info is None:
            raise Internal("get_object's header names no object")
        return ObjectInfo.from_message(info)

    @property
    def offset(self) -> int:
        """Where in the object the bytes that follow start."""
        return int(self._got().offset)

    @property
    def length(self) -> int:
        """How many bytes follow."""
        return int(self._got().length)

    def __aiter__(self) -> ObjectReader:
        return self

    async def __anext__(self) -> bytes:
        self._got()
        return await self._stream.__anext__()

    async def read(self) -> bytes:
        """Every byte still to come, joined (the whole range in memory: for small objects)."""
        return b"".join([chunk async for chunk in self])


class Objects:
    """Objects of one namespace: ``objects = client.objects("media")``. ``bucket`` ""
    means the plugin's configured bucket, for every call of this view."""

    def __init__(self, client: Client, namespace: str, bucket: str = "") -> None:
        self.client = client
        self.namespace = namespace
        self.bucket = bucket

    def __repr__(self) -> str:
        return f"<prism.client.Objects {self.namespace!r} bucket={self.bucket or '(default)'!r}>"

    def in_bucket(self, bucket: str) -> Objects:
        """The same namespace, with ``bucket`` instead of the configured one."""
        return Objects(self.client, self.namespace, bucket)

    def with_timeout(self, timeout: float | None) -> Objects:
        """The same view with each unary call (head, list, delete) bounded by ``timeout``."""
        return Objects(self.client.with_timeout(timeout), self.namespace, self.bucket)

    async def put(
        self,
        key: str,
        data: Data,
        *,
        content_type: str = "",
        metadata: Mapping[str, str] | None = None,
        size: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> PutResult:
        """Store ``data`` under ``key``: ``bytes`` or a binary file (sent in ``chunk_size``
        pieces), or an iterable or async iterable of chunks, streamed as they come (memory
        stays bounded by a chunk here). ``size``, when given, is checked by the plugin: another
        number of bytes stores nothing (``InvalidArgument``). It is filled in for bytes and for
        a regular file (the bytes from its position on); give it for an iterable when it is
        known: the plugin then streams the parts to the backend instead of holding each one.
        The object exists (replacing one of the same key) once this returns. An exception from
        ``data`` or a cancellation (the caller's cancel scope is the deadline:
        ``trio.fail_after``) cancels the stream, and nothing is stored."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        request = PutObjectRequest(
            bucket=self.bucket,
            key=key,
            content_type=content_type,
            metadata=dict(metadata or {}),
            size=_known_size(data) if size is None else size,
        )
        stream = self.client._stream(self.namespace, "put_object", request, _put_result)
        async with stream:
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data)
                for start in range(0, len(view), chunk_size):
                    await stream.send(bytes(view[start : start + chunk_size]))
            elif callable(getattr(data, "read", None)):
                reader: IO[bytes] = data  # type: ignore[assignment]
                while chunk := reader.read(chunk_size):
                    await stream.send(bytes(chunk))
            elif isinstance(data, AsyncIterable):
                async for chunk in data:
                    await stream.send(bytes(chunk))
            else:
                for chunk in data:
                    await stream.send(bytes(chunk))
            await stream.end()
            result = await stream.receive()
        if result is None:
            raise Internal("put_object ended without its result")
        return result

    def get(
        self, key: str, *, offset: int = 0, length: int = 0, timeout: float | None = None
    ) -> ObjectReader:
        """Read ``key`` (``length`` bytes from ``offset``; 0 = to the end) as a stream of chunks:
        see :class:`ObjectReader`. ``timeout`` (seconds) bounds the whole read."""
        request = GetObjectRequest(bucket=self.bucket, key=key, offset=offset, length=length)
        return ObjectReader(
            self.client._stream(self.namespace, "get_object", request, _raw, timeout=timeout)
        )

    async def read(self, key: str, *, offset: int = 0, length: int = 0) -> bytes:
        """The object's bytes (or a range of them), joined in memory: for small objects."""
        async with self.get(key, offset=offset, length=length) as reader:
            return await reader.read()

    async def head(self, key: str) -> ObjectInfo:
        """The object's info; ``NotFound`` when there is none."""
        request = HeadObjectRequest(bucket=self.bucket, key=key)
        info = await self.client.execute(self.namespace, "head_object", request, ObjectInfoMessage)
        return ObjectInfo.from_message(info)

    async def list(
        self, prefix: str = "", *, page_token: str = "", page_size: int = 0
    ) -> ObjectPage:
        """One page of the objects under ``prefix``, in key order (``page_size`` 0: the
        plugin's default). Pass the page's ``next_page_token`` for the next one."""
        request = ListObjectsRequest(
            bucket=self.bucket, prefix=prefix, page_token=page_token, page_size=page_size
        )
        page = await self.client.execute(
            self.namespace, "list_objects", request, ListObjectsResponse
        )
        objects = [ObjectInfo.from_message(o) for o in page.objects]
        return ObjectPage(objects, page.next_page_token)

    async def list_all(self, prefix: str = "", *, page_size: int = 0) -> AsyncIterable[ObjectInfo]:
        """Every object under ``prefix``, page after page, as an async iterator."""
        token = ""
        while True:
            page = await self.list(prefix, page_token=token, page_size=page_size)
            for info in page.objects:
                yield info
            token = page.next_page_token
            if not token:
                return

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting an object that does not exist succeeds (S3's rule)."""
        request = DeleteObjectRequest(bucket=self.bucket, key=key)
        await self.client.execute(self.namespace, "delete_object", request, DeleteObjectResponse)
