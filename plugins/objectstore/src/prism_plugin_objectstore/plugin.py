"""objectstore: the object contract (``prism.data.v1`` object.proto) on an S3-compatible API.

Requests go through ``s3.S3`` (httpx on Trio, SigV4 by botocore's signer). Puts and gets stream:
a put of known size streams its parts as the bytes come (``upload.put_streamed``: a chunk or two
per part in flight), one of unknown size holds a part (``part_size``), a get a chunk.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Mapping

import httpx
import trio

from prism._proto.prism.data.v1 import (
    DeleteObjectRequest,
    DeleteObjectResponse,
    GetObjectHeader,
    GetObjectRequest,
    HeadObjectRequest,
    ListObjectsRequest,
    ListObjectsResponse,
    ObjectInfo,
    PutObjectRequest,
    PutObjectResponse,
)
from prism.sdk import (
    AlreadyExists,
    BackendPlugin,
    GrpcError,
    HealthReport,
    HealthStatus,
    InvalidArgument,
    NotFound,
    OperationContext,
    OperationStream,
    Unauthenticated,
    operation,
    stream_operation,
)
from prism_plugin_objectstore import names
from prism_plugin_objectstore._proto.prism.plugins.objectstore.v1 import ObjectStoreConfig
from prism_plugin_objectstore.s3 import S3, children, object_path, parse_xml, text
from prism_plugin_objectstore.upload import Upload, put_streamed

__all__ = ["ObjectStorePlugin"]

MIB = 1 << 20
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 512 * MIB
DEFAULT_CHUNK_SIZE = MIB
MAX_CHUNK_SIZE = 4 * MIB - 64 * 1024
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_CONNECTIONS = 16
MAX_PAGE_SIZE = 1000
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def _check_bucket(bucket: str) -> str:
    if not _BUCKET.match(bucket):
        raise InvalidArgument(
            f"bucket {bucket!r}: 3..63 lower-case letters, digits, '.' and '-' (S3's rule)"
        )
    return bucket


class ObjectStorePlugin(BackendPlugin):
    name = "objectstore"
    version = "0.1.0"
    config_type = ObjectStoreConfig

    def __init__(self) -> None:
        super().__init__()
        self.config = ObjectStoreConfig()
        self._http: httpx.AsyncClient | None = None
        self._s3: S3 | None = None

    # -- lifetime ------------------------------------------------------------------------------

    async def initialize(
        self, config: ObjectStoreConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        if not config.endpoint.startswith(("http://", "https://")):
            raise InvalidArgument("config field 'endpoint' must be an http:// or https:// URL")
        for field in ("part_size", "chunk_size", "request_timeout_ms", "max_connections"):
            if getattr(config, field) < 0:
                raise InvalidArgument(f"config field {field!r} must not be negative")
        config.part_size = config.part_size or DEFAULT_PART_SIZE
        if not MIN_PART_SIZE <= config.part_size <= MAX_PART_SIZE:
            raise InvalidArgument(
                f"config field 'part_size' must be {MIN_PART_SIZE}..{MAX_PART_SIZE} bytes"
            )
        config.chunk_size = config.chunk_size or DEFAULT_CHUNK_SIZE
        if config.chunk_size > MAX_CHUNK_SIZE:
            raise InvalidArgument(f"config field 'chunk_size' must be at most {MAX_CHUNK_SIZE}")
        if config.bucket:
            _check_bucket(config.bucket)
        elif config.create_bucket:
            raise InvalidArgument("config field 'create_bucket' needs 'bucket'")
        key_id = credentials.get("access_key_id", "")
        secret = credentials.get("secret_access_key", "")
        if not config.anonymous and not (key_id and secret):
            raise InvalidArgument(
                "missing required credential 'access_key_id' and 'secret_access_key' (set "
                "config 'anonymous: true' for an endpoint that takes unsigned requests)"
            )
        self.config = config
        verify: ssl.SSLContext | bool = True
        if config.ca_file:
            path = self.config_path(config.ca_file)
            try:
                verify = ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                raise InvalidArgument(f"config field 'ca_file': {path}: {exc}") from None
        connections = config.max_connections or DEFAULT_MAX_CONNECTIONS
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=(config.request_timeout_ms or DEFAULT_TIMEOUT_MS) / 1000,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"Accept-Encoding": "identity"},  # the stored bytes, exactly
        )
        self._s3 = S3(
            self._http,
            config.endpoint,
            config.region or "us-east-1",
            None if config.anonymous else (key_id, secret),
        )
        try:
            await self._probe()
        except BaseException:
            await self._close()
            raise

    async def _probe(self) -> None:
        """Check the endpoint and the credentials: list the bucket (one key at most), creating
        it first when configured to; without a bucket, list the buckets."""
        s3 = self.s3
        bucket = self.config.bucket
        if not bucket:
            await s3.call("GET", "/", "listing the buckets")
            return
        listing = [("list-type", "2"), ("max-keys", "1")]
        try:
            await s3.call("GET", object_path(bucket), f"bucket {bucket!r}", query=listing)
        except NotFound:
            if not self.config.create_bucket:
                raise
            with contextlib.suppress(AlreadyExists):  # another instance was first
                await s3.call("PUT", object_path(bucket), f"creating bucket {bucket!r}")

    @property
    def s3(self) -> S3:
        if self._s3 is None:
            raise RuntimeError("the objectstore plugin is not initialized")
        return self._s3

    async def health(self) -> HealthReport:
        details = {"endpoint": self.config.endpoint, "bucket": self.config.bucket}
        try:
            await self._probe()
        except Unauthenticated as exc:
            return HealthReport(HealthStatus.UNHEALTHY, exc.message, details)
        except GrpcError as exc:
            return HealthReport(HealthStatus.DEGRADED, exc.message, details)
        return HealthReport(details=details)

    async def shutdown(self, grace_seconds: float) -> None:
        await self._close()

    async def _close(self) -> None:
        http, self._http, self._s3 = self._http, None, None
        if http is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await http.aclose()

    # -- names ---------------------------------------------------------------------------------

    def _target(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(bucket, key, "what" for messages) of a request."""
        bucket = bucket or self.config.bucket
        if not bucket:
            raise InvalidArgument("no bucket: the request names none and the config has none")
        _check_bucket(bucket)
        names.check_key(key)
        return bucket, key, f"object {key!r} in bucket {bucket!r}"

    # -- operations ----------------------------------------------------------------------------

    @stream_operation(
        "put_object", params=PutObjectRequest, result=PutObjectResponse, inbound=bytes
    )
    async def put_object(self, params: PutObjectRequest, stream: OperationStream) -> None:
        """A put whose ``size`` is given and larger than ``part_size`` is a multipart upload
        whose parts stream to the backend as the chunks come (see ``upload.put_streamed``).
        Otherwise chunks are gathered into parts of ``part_size``: a stream no longer than one
        part is one PUT, a longer one a multipart upload whose parts go up as they fill.
        Cancellation or a failure aborts the upload (see ``upload.Upload``): nothing is stored."""
        bucket, key, what = self._target(params.bucket, params.key)
        if params.size is not None and params.size < 0:
            raise InvalidArgument("size must not be negative")
        headers = {
            "Content-Type": names.check_content_type(params.content_type),
            **names.check_metadata(params.metadata),
        }

        async def receive() -> bytes | None:
            chunk = await stream.receive()
            assert chunk is None or isinstance(chunk, bytes)
            return chunk

        part_size = self.config.part_size
        check = not self.config.skip_etag_check
        path = object_path(bucket, key)
        async with Upload(self.s3, path, what, headers, self.logger, check_etags=check) as upload:
            if params.size is not None and params.size > part_size:
                await put_streamed(upload, receive, params.size, part_size, what)
                total = params.size
                etag = await upload.finish(b"")
            else:
                total = 0
                buffer = bytearray()
                while (chunk := await receive()) is not None:
                    total += len(chunk)
                    if params.size is not None and total > params.size:
                        raise InvalidArgument(
                            f"{what}: more bytes than the size given ({params.size})"
                        )
                    buffer += chunk
                    # A part goes up only once more bytes follow it: an object of exactly one
                    # part is a single PUT.
                    while len(buffer) > part_size:
                        part = bytes(memoryview(buffer)[:part_size])
                        del buffer[:part_size]
                        await upload.part(part)
                if params.size is not None and total != params.size:
                    raise InvalidArgument(
                        f"{what}: {total} bytes came, the size given is {params.size}"
                    )
                etag = await upload.finish(bytes(buffer))
        await stream.send(PutObjectResponse(size=total, etag=etag))

    @stream_operation("get_object", params=GetObjectRequest, result=bytes)
    async def get_object(self, params: GetObjectRequest, stream: OperationStream) -> None:
        """The header (a ``GetObjectHeader``'s bytes), then the body in chunks of at most
        ``chunk_size``, each sent before the next is read from the backend."""
        bucket, key, what = self._target(params.bucket, params.key)
        headers = names.range_header(params.offset, params.length)
        async with self.s3.open("GET", object_path(bucket, key), what, headers=headers) as response:
            info, offset, length = names.info_from_headers(bucket, key, response.headers)
            await stream.send(bytes(GetObjectHeader(info=info, offset=offset, length=length)))
            async for chunk in response.aiter_raw(self.config.chunk_size):
                await stream.send(chunk)

    @operation("head_object", params=HeadObjectRequest, result=ObjectInfo)
    async def head_object(self, params: HeadObjectRequest, ctx: OperationContext) -> ObjectInfo:
        bucket, key, what = self._target(params.bucket, params.key)
        response = await self.s3.call("HEAD", object_path(bucket, key), what)
        info, _, _ = names.info_from_headers(bucket, key, response.headers)
        return info

    @operation("list_objects", params=ListObjectsRequest, result=ListObjectsResponse)
    async def list_objects(
        self, params: ListObjectsRequest, ctx: OperationContext
    ) -> ListObjectsResponse:
        bucket = params.bucket or self.config.bucket
        if not bucket:
            raise InvalidArgument("no bucket: the request names none and the config has none")
        _check_bucket(bucket)
        if not 0 <= params.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 0..{MAX_PAGE_SIZE}")
        query = [("list-type", "2"), ("max-keys", str(params.page_size or MAX_PAGE_SIZE))]
        if params.prefix:
            query.append(("prefix", params.prefix))
        if params.page_token:
            query.append(("continuation-token", params.page_token))
        what = f"listing bucket {bucket!r}"
        response = await self.s3.call("GET", object_path(bucket), what, query=query)
        root = parse_xml(response.content, what)
        objects = [
            ObjectInfo(
                bucket=bucket,
                key=text(item, "Key"),
                size=int(text(item, "Size") or 0),
                etag=names.etag(text(item, "ETag")),
                last_modified=names.iso_date(text(item, "LastModified")),
            )
            for item in children(root, "Contents")
        ]
        truncated = text(root, "IsTruncated").lower() == "true"
        token = text(root, "NextContinuationToken") if truncated else ""
        return ListObjectsResponse(objects=objects, next_page_token=token)

    @operation("delete_object", params=DeleteObjectRequest, result=DeleteObjectResponse)
    async def delete_object(
        self, params: DeleteObjectRequest, ctx: OperationContext
    ) -> DeleteObjectResponse:
        bucket, key, what = self._target(params.bucket, params.key)
        await self.s3.call("DELETE", object_path(bucket, key), what)
        return DeleteObjectResponse()
