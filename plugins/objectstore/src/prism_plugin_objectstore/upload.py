"""One put: a single PUT, or a multipart upload that is either completed or aborted.

The upload starts on the first part (so an object of at most one part never starts one); the
block's end completes it (``finish``), and leaving the block any other way — an error, the
client's reset, a cancellation — aborts it within ``ABORT_GRACE`` seconds, shielded, so S3 keeps
no orphan parts.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from types import TracebackType

import trio

from prism.sdk import GrpcError, Unavailable
from prism_plugin_objectstore.names import etag
from prism_plugin_objectstore.s3 import S3, parse_xml, text

__all__ = ["ABORT_GRACE", "Upload"]

#: Seconds an abort may take once the stream has failed or been cancelled.
ABORT_GRACE = 10.0


class Upload:
    def __init__(
        self,
        s3: S3,
        path: str,
        what: str,
        headers: Mapping[str, str],
        logger: logging.Logger,
    ) -> None:
        self._s3 = s3
        self._logger = logger
        self._path = path
        self._what = what
        self._headers = dict(headers)
        self._upload_id = ""
        self._parts: list[str] = []  # ETags, in part order
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

    async def part(self, data: bytes) -> None:
        """Upload the next part (of the configured part size)."""
        if not self._upload_id:
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
        number = len(self._parts) + 1
        response = await self._s3.call(
            "PUT",
            self._path,
            f"part {number} of {self._what}",
            query=[("partNumber", str(number)), ("uploadId", self._upload_id)],
            body=data,
        )
        self._parts.append(response.headers.get("etag", ""))

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
        for number, part_etag in enumerate(self._parts, start=1):
            part = ET.SubElement(root, "Part")
            ET.SubElement(part, "PartNumber").text = str(number)
            ET.SubElement(part, "ETag").text = part_etag
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
