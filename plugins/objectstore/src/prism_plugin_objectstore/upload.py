"""One put: a single PUT, or a multipart upload that is either completed or aborted.

The upload starts on the first part (so an object of at most one part never starts one); the
block's end completes it (``finish``), and leaving the block any other way — an error, the
client's reset, a cancellation — aborts it within ``ABORT_GRACE`` seconds, shielded, so S3 keeps
no orphan parts.

Parts go up two ways. A buffered part (``part``: the put's size is unknown, so a part is known
only once it is full) is sent with its Content-MD5, which the server checks. A streamed part
(``stream_part``, used by ``put_streamed`` when the size is known, so every part's length is)
is sent while its bytes arrive, signed ``UNSIGNED-PAYLOAD``; its MD5 is computed on the way and
compared with the ETag the server answers (the MD5 of what it stored), DATA_LOSS when they differ.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType

import trio

from prism.sdk import DataLoss, GrpcError, InvalidArgument, Unavailable
from prism_plugin_objectstore.names import etag
from prism_plugin_objectstore.s3 import S3, Streamed, parse_xml, text

__all__ = ["ABORT_GRACE", "IN_FLIGHT", "Upload", "put_streamed"]

#: Seconds an abort may take once the stream has failed or been cancelled.
ABORT_GRACE = 10.0
#: Streamed parts uploading at once: the next part's bytes flow while the previous part waits
#: for the server's answer (it stores the part before it answers).
IN_FLIGHT = 2
#: Chunks at least this large are hashed in a worker thread (hashlib releases the GIL), so the
#: event loop receives the next chunk meanwhile.
THREADED_MD5 = 256 * 1024


class Upload:
    def __init__(
        self,
        s3: S3,
        path: str,
        what: str,
        headers: Mapping[str, str],
        logger: logging.Logger,
        *,
        check_etags: bool = True,
    ) -> None:
        self._s3 = s3
        self._logger = logger
        self._path = path
        self._what = what
        self._headers = dict(headers)
        self._check_etags = check_etags
        self._upload_id = ""
        self._parts: dict[int, str] = {}  # part number → its ETag
        self._numbers = 0  # part numbers handed out
        self._done = False

    async def __aenter__(self) -> Upload:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._upload_id and not self._done:
            with trio.move_on_after(ABORT_GRACE) as scope:
                scope.shield = True
                try:
                    await self._s3.call(
                        "DELETE",
                        self._path,
                        f"aborting the upload of {self._what}",
                        query=[("uploadId", self._upload_id)],
                    )
                except GrpcError as exc:
                    # The stream's own failure is what the caller sees; the parts of a failed
                    # abort are left to the bucket's lifecycle rules, so say so.
                    self._logger.warning("%s: %s", self._what, exc.message)
            if scope.cancelled_caught:
                self._logger.warning("aborting the upload of %s took too long", self._what)

    async def start(self) -> None:
        """Begin the multipart upload (once; ``part`` does it when it has not been)."""
        if self._upload_id:
            return
        response = await self._s3.call(
            "POST",
            self._path,
            f"starting the upload of {self._what}",
            query=[("uploads", "")],
            headers=self._headers,
        )
        upload_id = text(parse_xml(response.content, self._what), "UploadId")
        if not upload_id:
            raise Unavailable(f"{self._what}: the backend started an upload without an id")
        self._upload_id = upload_id

    def _next_number(self) -> int:
        self._numbers += 1
        return self._numbers

    async def _put_part(self, number: int, body: bytes | Streamed) -> str:
        response = await self._s3.call(
            "PUT",
            self._path,
            f"part {number} of {self._what}",
            query=[("partNumber", str(number)), ("uploadId", self._upload_id)],
            body=body,
        )
        return str(response.headers.get("etag", ""))

    async def part(self, data: bytes) -> None:
        """Upload the next part (of the configured part size), held whole."""
        await self.start()
        number = self._next_number()
        self._parts[number] = await self._put_part(number, data)

    async def stream_part(self, length: int, chunks: AsyncIterable[bytes]) -> None:
        """Upload the next part: ``length`` bytes, which ``chunks`` yields as they come (``start``
        first). DATA_LOSS when the server's ETag is not the MD5 of those bytes (unless the
        check is off). Cancellation abandons the part's request."""
        number = self._next_number()
        md5 = hashlib.md5(usedforsecurity=False)
        check = self._check_etags

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield chunk
                if not check:
                    continue
                if len(chunk) >= THREADED_MD5:
                    await trio.to_thread.run_sync(md5.update, chunk)
                else:
                    md5.update(chunk)

        part_etag = await self._put_part(number, Streamed(length, body()))
        if check and etag(part_etag).lower() != md5.hexdigest():
            raise DataLoss(
                f"part {number} of {self._what}: the backend's ETag {part_etag!r} is not the MD5 "
                f"of the bytes sent ({md5.hexdigest()}): it stored other bytes (set "
                "'skip_etag_check' for a server whose ETags are not MD5s)"
            )
        self._parts[number] = part_etag

    async def finish(self, rest: bytes) -> str:
        """Store the object: ``rest`` is what follows the parts sent (all of it, when none
        was). Returns the object's ETag."""
        if not self._upload_id:
            response = await self._s3.call(
                "PUT", self._path, self._what, headers=self._headers, body=rest
            )
            self._done = True
            return etag(response.headers.get("etag", ""))
        if rest:
            await self.part(rest)
        root = ET.Element("CompleteMultipartUpload")
        for number in sorted(self._parts):
            part = ET.SubElement(root, "Part")
            ET.SubElement(part, "PartNumber").text = str(number)
            ET.SubElement(part, "ETag").text = self._parts[number]
        response = await self._s3.call(
            "POST",
            self._path,
            f"completing the upload of {self._what}",
            query=[("uploadId", self._upload_id)],
            body=ET.tostring(root),
        )
        # S3 may answer 200 and put an error in the body (a failure after the answer began).
        answer = parse_xml(response.content, self._what)
        if answer.tag.rpartition("}")[2] == "Error":
            raise Unavailable(f"completing the upload of {self._what}: {text(answer, 'Code')}")
        self._done = True
        return etag(text(answer, "ETag"))


async def put_streamed(
    upload: Upload,
    receive: Callable[[], Awaitable[bytes | None]],
    size: int,
    part_size: int,
    what: str,
) -> None:
    """Send the put's ``size`` bytes, which ``receive`` returns chunk by chunk (None at the
    end), as parts of ``part_size`` streamed while they arrive, ``IN_FLIGHT`` parts at most at
    once; the caller then calls ``upload.finish(b"")``. What is held meanwhile is a chunk or two
    per part in flight, whatever the part size. INVALID_ARGUMENT when another number of bytes
    comes. Cancellation or a failure cancels the parts in flight (the block aborts the upload)."""
    await upload.start()
    in_flight = trio.Semaphore(IN_FLIGHT)
    received = 0
    leftover = b""  # the part of a chunk that belongs to the next part

    async def one_part(length: int, chunks: trio.MemoryReceiveChannel[bytes]) -> None:
        # Neither end of a part's channel is closed on a failure: the other side would see a
        # broken channel before the nursery's cancellation reached it, and raise that instead.
        try:
            await upload.stream_part(length, chunks)
        finally:
            in_flight.release()

    try:
        async with trio.open_nursery() as nursery:
            for start in range(0, size, part_size):
                wanted = min(part_size, size - start)
                await in_flight.acquire()
                # No buffer: the next chunk is taken from the stream only once the request has
                # taken this one, so flow control reaches the client.
                send, chunks = trio.open_memory_channel[bytes](0)
                nursery.start_soon(one_part, wanted, chunks)
                while wanted:
                    if not leftover:
                        chunk = await receive()
                        if chunk is None:
                            raise InvalidArgument(
                                f"{what}: {received} bytes came, the size given is {size}"
                            )
                        received += len(chunk)
                        leftover = chunk
                    if len(leftover) <= wanted:
                        piece, leftover = leftover, b""
                    else:
                        piece, leftover = leftover[:wanted], leftover[wanted:]
                    wanted -= len(piece)
                    await send.send(piece)
                send.close()  # the part's body ends
            if leftover or await receive() is not None:
                raise InvalidArgument(f"{what}: more bytes than the size given ({size})")
    except BaseExceptionGroup as group:
        error = _single(group)
        if error is None:
            raise
        raise error from None


def _single(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one error a nursery's group holds besides cancellations (the failed part, or the
    reader's own); None when there is none or several."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], Exception) else None
