"""The S3 API over httpx (on Trio), each request signed with botocore's SigV4 signer.

Path-style addressing (``<endpoint>/<bucket>/<key>``), which every S3-compatible server serves.
A body is either ``bytes`` the caller holds (at most one part), signed with its SHA-256 and sent
with its ``Content-MD5`` (which the server checks: SeaweedFS ignores ``x-amz-content-sha256``),
or :class:`Streamed`, bytes that come while they are sent, signed ``UNSIGNED-PAYLOAD``, whose
integrity the caller checks (upload.py: the part's MD5 against its ETag). Responses are read
whole only when they are small (XML listings, errors), and streamed otherwise (:meth:`S3.open`).
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import trio
from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from prism.sdk import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    GrpcError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unknown,
)

__all__ = ["S3", "Answer", "Streamed", "error_for", "text"]

#: Bodies at least this large are hashed (SigV4's payload hash, Content-MD5) in a worker
#: thread: hashlib releases the GIL, and the event loop keeps serving other streams meanwhile.
THREADED_HASH = 1 << 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Error bodies and listings read whole: more than this is not an S3 answer.
MAX_SMALL_BODY = 4 << 20

_UNAUTHENTICATED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "MissingSecurityHeader",
    "AccessKeyDisabled",
}
_PERMISSION_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_INVALID = {
    "InvalidArgument",
    "InvalidBucketName",
    "KeyTooLongError",
    "MetadataTooLarge",
    "EntityTooSmall",
    "EntityTooLarge",
    "InvalidPart",
    "InvalidPartOrder",
    "MalformedXML",
    "InvalidDigest",
    "IncompleteBody",
    "InvalidRequest",
}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}


@dataclass(frozen=True, slots=True)
class Answer:
    """A small answer, read whole."""

    status: int
    headers: httpx.Headers
    content: bytes


@dataclass(frozen=True, slots=True)
class Streamed:
    """A body of ``length`` bytes that ``chunks`` yields while it is sent (never held whole).
    It is signed ``UNSIGNED-PAYLOAD``: its SHA-256 would need every byte before the request."""

    length: int
    chunks: AsyncIterable[bytes]


class _Signer(S3SigV4Auth):
    """S3's SigV4 with the payload hash computed by the caller (in a thread, for big bodies),
    so botocore never touches the body."""

    def payload(self, request: Any) -> str:
        precomputed = request.context.get("prism_payload_sha256")
        return precomputed if isinstance(precomputed, str) else str(super().payload(request))


def error_for(status: int, code: str, message: str, what: str) -> GrpcError:
    """The gRPC status of an S3 error response (``code`` from its XML body; "" for a HEAD)."""
    detail = f"{what}: {code or f'HTTP {status}'}" + (f" ({message})" if message else "")
    if code == "NoSuchKey" or (not code and status == 404):
        return NotFound(f"{what}: no such object")
    if code == "NoSuchBucket":
        return NotFound(f"{what}: no such bucket")
    if code == "NoSuchUpload":
        return NotFound(f"{what}: the multipart upload is gone")
    if code in _UNAUTHENTICATED or status == 401:
        return Unauthenticated(f"{what}: the backend refused the credentials ({code or status})")
    if code in _PERMISSION_DENIED or status == 403:
        return PermissionDenied(detail)
    if code == "InvalidRange" or status == 416:
        return OutOfRange(detail)
    if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        return AlreadyExists(detail)
    if code == "BadDigest":  # the bytes the server got are not those whose MD5 was sent
        return DataLoss(f"{what}: the backend received other bytes than were sent ({code})")
    if code == "PreconditionFailed" or status == 412:
        return FailedPrecondition(detail)
    if code in _INVALID or status == 400:
        return InvalidArgument(detail)
    if code in _UNAVAILABLE or status >= 500:
        return Unavailable(detail)
    return Unknown(detail)


def text(element: ET.Element, name: str) -> str:
    """The text of ``element``'s child ``name`` (any XML namespace), "" when absent."""
    for child in element:
        if child.tag.rpartition("}")[2] == name:
            return child.text or ""
    return ""


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if child.tag.rpartition("}")[2] == name]


def parse_xml(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise Unavailable(f"{what}: the backend sent a malformed XML answer") from None


def _query(params: Sequence[tuple[str, str]]) -> str:
    # SigV4's canonical query: names and values URI-encoded, sorted; the URL carries the same.
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in encoded)


def object_path(bucket: str, key: str = "") -> str:
    """``/<bucket>/<key>``, URI-encoded as SigV4 signs it for S3 (once; '/' kept)."""
    path = "/" + quote(bucket, safe="")
    if key:
        path += "/" + quote(key, safe="/~")
    return path


class S3:
    """Signed requests to one endpoint through one httpx client (its connection pool)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        endpoint: str,
        region: str,
        credentials: tuple[str, str] | None,
    ) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self._signer = (
            None
            if credentials is None
            else _Signer(Credentials(credentials[0], credentials[1]), "s3", region)
        )

    def __repr__(self) -> str:
        return f"<S3 {self.endpoint} {'signed' if self._signer else 'anonymous'}>"

    async def _request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | Streamed,
    ) -> httpx.Request:
        url = self.endpoint + path + (f"?{_query(query)}" if query else "")
        headers = dict(headers)
        content: AsyncIterable[bytes] | None = None
        if isinstance(body, Streamed):
            headers["Content-Length"] = str(body.length)
            digest = UNSIGNED_PAYLOAD
            content = body.chunks
        elif body:
            headers["Content-Length"] = str(len(body))
            if len(body) >= THREADED_HASH:
                digest, md5 = await trio.to_thread.run_sync(_digests, body)
            else:
                digest, md5 = _digests(body)
            headers["Content-MD5"] = md5
            # The body goes as a one-shot async iterable (with its Content-Length, so not
            # chunked): an httpx Request holding the bytes themselves keeps them alive as long
            # as its Response, which sits in a reference cycle until a full garbage collection
            # — a part per request, piling up in a long put.
            content = _once(body)
        else:
            digest = EMPTY_SHA256
        if self._signer is not None:
            signed = AWSRequest(method=method, url=url, headers=headers)
            signed.context["prism_payload_sha256"] = digest
            self._signer.add_auth(signed)
            headers = dict(signed.headers.items())
        return self.http.build_request(method, url, headers=headers, content=content)

    async def call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | Streamed = b"",
    ) -> Answer:
        """One request whose answer is small (read whole); a non-2xx answer raises its status.
        A :class:`Streamed` body is pulled from its iterator as the socket takes it.
        Cancellation abandons the request (its connection is closed, not reused)."""
        request = await self._request(method, path, query, headers or {}, body)
        try:
            response = await self.http.send(request, stream=True)
            try:
                content = await _read_small(response, what)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from None
        if response.status_code >= 300:
            raise _error_of(response.status_code, content, what)
        return Answer(response.status_code, response.headers, content)

    @asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A request whose answer is streamed: yields the response (2xx) with its body unread;
        read it with ``response.aiter_raw(n)``. A non-2xx answer raises its status; a transport
        failure while reading raises ``Unavailable``. Leaving the block closes the response."""
        request = await self._request(method, path, (), headers or {}, b"")
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from None
        try:
            if response.status_code >= 300:
                content = await _read_small(response, what)
                raise _error_of(response.status_code, content, what)
            try:
                yield response
            except httpx.HTTPError as exc:
                raise _transport_error(exc, what) from None
        finally:
            await response.aclose()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _digests(body: bytes) -> tuple[str, str]:
    """SigV4's payload hash and the Content-MD5 header of ``body``."""
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    return hashlib.sha256(body).hexdigest(), md5


async def _read_small(response: httpx.Response, what: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_raw():
        size += len(part)
        if size > MAX_SMALL_BODY:
            raise Unavailable(f"{what}: the backend's answer is larger than {MAX_SMALL_BODY} bytes")
        parts.append(part)
    return b"".join(parts)


def _error_of(status: int, content: bytes, what: str) -> GrpcError:
    code = message = ""
    if content:
        try:
            root = ET.fromstring(content)
        except ET.ParseError:
            pass
        else:
            code, message = text(root, "Code"), text(root, "Message")
    return error_for(status, code, message, what)


def _transport_error(exc: httpx.HTTPError, what: str) -> GrpcError:
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"{what}: the backend did not answer in time ({type(exc).__name__})")
    return Unavailable(f"{what}: the backend cannot be reached ({type(exc).__name__})")
