"""object: put streamed in chunks, get streamed (whole, and byte ranges), head, list by prefix
page by page, delete — with size, content type, ETag and user metadata. Round trips of the
sizes where streams break (0, 1, a chunk less one, a chunk, a chunk and one, several parts),
with the size announced (the plugin streams the parts) and without (it gathers them),
checked in the backend itself where the target has an inspector; a put cancelled half-way
stores nothing and leaves no multipart upload behind.

The target's config fixes the sizes this suite reasons about: ``chunk_size`` (CHUNK) and
``part_size`` (PART) — see targets.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import trio
from kit import Ctx, check, eventually, expect_status

from prism._proto.prism.data.v1 import (
    DeleteObjectRequest,
    GetObjectHeader,
    GetObjectRequest,
    HeadObjectRequest,
    ListObjectsRequest,
    PutObjectRequest,
)
from prism.grpc.wire.status import Status

WITHIN = 60  # seconds: only catches a stream that never ends
CHUNK = 64 * 1024  # the targets' get_object chunk size
PART = 5 << 20  # the targets' multipart part size (S3's smallest)
SEND = 256 * 1024  # the chunks this suite puts


def payload(size: int, seed: str = "") -> bytes:
    """``size`` bytes that differ at every offset (a misplaced chunk shows)."""
    block = hashlib.sha256(seed.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


async def put(ctx: Ctx, key: str, data: bytes, *, send: int = SEND, **fields: Any) -> Any:
    async with ctx.client.stream("put_object", PutObjectRequest(key=key, **fields)) as stream:
        for start in range(0, len(data), send):
            await stream.send(data[start : start + send])
        await stream.end()
        with trio.fail_after(WITHIN):
            result = await stream.receive()
    assert result is not None, "put_object ended without a result"
    return result


async def get(ctx: Ctx, key: str, **fields: Any) -> tuple[GetObjectHeader, list[bytes]]:
    async with ctx.client.stream("get_object", GetObjectRequest(key=key, **fields)) as stream:
        with trio.fail_after(WITHIN):
            first = await stream.receive()
            assert isinstance(first, bytes), f"get_object's first result is {type(first)}"
            chunks = []
            while (chunk := await stream.receive()) is not None:
                chunks.append(chunk)
    return GetObjectHeader.parse(first), chunks


async def backend_bytes(ctx: Ctx, key: str) -> bytes | None:
    if ctx.inspector is None:
        return None
    return await trio.to_thread.run_sync(ctx.inspector.value, key)


@check("object")
async def every_size_round_trips_byte_for_byte(ctx: Ctx) -> None:
    for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * PART + 1):
        key = ctx.key(f"size-{size}")
        data = payload(size, key)
        written = await put(ctx, key, data)
        assert written.size == size
        assert written.etag
        header, chunks = await get(ctx, key)
        assert header.info.size == size
        assert header.info.etag == written.etag
        assert (header.offset, header.length) == (0, size)
        assert all(0 < len(c) <= CHUNK for c in chunks), [len(c) for c in chunks]
        assert b"".join(chunks) == data, f"{size} bytes did not come back as they went"
        if ctx.inspector is not None:
            assert await backend_bytes(ctx, key) == data, f"the backend holds other bytes ({size})"


@check("object")
async def puts_of_announced_size_round_trip_byte_for_byte(ctx: Ctx) -> None:
    # With its size given, a put of several parts streams them to the backend as they come;
    # chunks that straddle parts (SEND does not divide PART + 1) must land in the right one.
    for size, send in ((2 * PART + 1, SEND), (3 * PART - 3, 3 * SEND + 5), (PART, SEND)):
        key = ctx.key(f"announced-{size}")
        data = payload(size, key)
        written = await put(ctx, key, data, send=send, size=size)
        assert written.size == size
        header, chunks = await get(ctx, key)
        assert header.info.etag == written.etag
        assert b"".join(chunks) == data, f"{size} bytes (size given) did not come back"
        if ctx.inspector is not None:
            assert await backend_bytes(ctx, key) == data, f"the backend holds other bytes ({size})"


@check("object")
async def a_multipart_put_of_another_size_than_announced_stores_nothing(ctx: Ctx) -> None:
    inspector: Any = ctx.inspector
    uploads = getattr(inspector, "uploads", None)
    for sent in (2 * PART - 1, 2 * PART + 1):  # announced: 2 * PART
        key = ctx.key(f"announced-multipart-{sent}")
        with expect_status(Status.INVALID_ARGUMENT):
            await put(ctx, key, payload(sent, key), size=2 * PART)
        with expect_status(Status.NOT_FOUND):
            await ctx.call("head_object", HeadObjectRequest(key=key))
        if uploads is not None:
            assert key not in await trio.to_thread.run_sync(uploads)


@check("object")
async def ranges_return_exactly_the_bytes_asked_for(ctx: Ctx) -> None:
    key = ctx.key("ranged")
    data = payload(3 * CHUNK + 17, key)
    await put(ctx, key, data)
    for offset, length in [(0, 1), (1, CHUNK), (CHUNK - 1, 2), (5, 0), (len(data) - 1, 0)]:
        header, chunks = await get(ctx, key, offset=offset, length=length)
        expected = data[offset : offset + length] if length else data[offset:]
        assert b"".join(chunks) == expected, (offset, length)
        assert (header.offset, header.length) == (offset, len(expected))
        assert header.info.size == len(data)  # the whole object's
    header, chunks = await get(ctx, key, offset=len(data) - 3, length=100)  # cut at the end
    assert b"".join(chunks) == data[-3:]
    with expect_status(Status.OUT_OF_RANGE):
        await get(ctx, key, offset=len(data))
    with expect_status(Status.INVALID_ARGUMENT):
        await get(ctx, key, offset=-1)


@check("object")
async def head_and_get_report_content_type_and_metadata(ctx: Ctx) -> None:
    key = ctx.key("described")
    metadata = {"color": "blue", "owner-id": "42"}
    written = await put(ctx, key, b"<p>hi</p>", content_type="text/html", metadata=metadata)
    info = await ctx.call("head_object", HeadObjectRequest(key=key))
    assert (info.key, info.size, info.content_type) == (key, 9, "text/html")
    assert info.metadata == metadata
    assert info.etag == written.etag
    assert info.last_modified is not None
    header, _ = await get(ctx, key)
    assert header.info.metadata == metadata
    assert header.info.content_type == "text/html"
    plain = await put(ctx, ctx.key("plain"), b"x")
    info = await ctx.call("head_object", HeadObjectRequest(key=ctx.key("plain")))
    assert info.content_type == "application/octet-stream"
    assert info.metadata == {}
    assert info.etag == plain.etag


@check("object")
async def a_second_put_replaces_the_object_and_its_etag(ctx: Ctx) -> None:
    key = ctx.key("replaced")
    first = await put(ctx, key, b"one", metadata={"v": "1"})
    second = await put(ctx, key, b"two!", metadata={"v": "2"})
    assert first.etag != second.etag
    info = await ctx.call("head_object", HeadObjectRequest(key=key))
    assert (info.size, info.etag, info.metadata) == (4, second.etag, {"v": "2"})


@check("object")
async def list_pages_through_a_prefix_in_key_order(ctx: Ctx) -> None:
    names = ["e", "a", "c", "b/nested", "d"]
    for name in names:
        await put(ctx, ctx.key(f"in/{name}"), name.encode())
    await put(ctx, ctx.key("out/x"), b"x")  # another prefix
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await ctx.call(
            "list_objects", ListObjectsRequest(prefix=ctx.key("in/"), page_size=2, page_token=token)
        )
        pages += 1
        assert len(page.objects) <= 2
        seen += [o.key for o in page.objects]
        for listed in page.objects:
            assert listed.size == len(listed.key.rpartition("/in/")[2])
            assert listed.etag
        token = page.next_page_token
        if not token:
            break
        assert pages < 10, "the pages never end"
    assert seen == sorted(ctx.key(f"in/{n}") for n in names)
    assert pages == 3


@check("object")
async def delete_removes_the_object_and_a_missing_one_is_fine(ctx: Ctx) -> None:
    key = ctx.key("doomed")
    await put(ctx, key, b"bye")
    await ctx.call("delete_object", DeleteObjectRequest(key=key))
    with expect_status(Status.NOT_FOUND):
        await ctx.call("head_object", HeadObjectRequest(key=key))
    if ctx.inspector is not None:
        assert await backend_bytes(ctx, key) is None
    await ctx.call("delete_object", DeleteObjectRequest(key=key))  # S3: no error


@check("object")
async def a_missing_object_is_not_found(ctx: Ctx) -> None:
    key = ctx.key("never-written")
    with expect_status(Status.NOT_FOUND):
        await ctx.call("head_object", HeadObjectRequest(key=key))
    with expect_status(Status.NOT_FOUND):
        await get(ctx, key)
    page = await ctx.call("list_objects", ListObjectsRequest(prefix=key))
    assert (list(page.objects), page.next_page_token) == ([], "")


@check("object")
async def a_put_cancelled_half_way_stores_nothing(ctx: Ctx) -> None:
    inspector: Any = ctx.inspector
    uploads = getattr(inspector, "uploads", None)  # the keys of uploads in progress
    for size in (SEND, PART + SEND):  # a single PUT never sent; a multipart upload begun
        key = ctx.key(f"cancelled-{size}")
        async with ctx.client.stream("put_object", PutObjectRequest(key=key)) as stream:
            data = payload(size, key)
            for start in range(0, size, SEND):
                await stream.send(data[start : start + SEND])
            # Leaving without end(): the stream is cancelled (RST_STREAM through the proxy).
        with expect_status(Status.NOT_FOUND):
            await ctx.call("head_object", HeadObjectRequest(key=key))
        if uploads is not None:

            async def no_upload_left(key: str = key) -> bool:
                return key not in await trio.to_thread.run_sync(uploads)

            await eventually(no_upload_left, f"a multipart upload of {key} is left", within=WITHIN)


@check("object")
async def a_put_of_another_size_than_announced_stores_nothing(ctx: Ctx) -> None:
    key = ctx.key("announced")
    with expect_status(Status.INVALID_ARGUMENT):
        await put(ctx, key, b"12345", size=6)
    with expect_status(Status.NOT_FOUND):
        await ctx.call("head_object", HeadObjectRequest(key=key))
    written = await put(ctx, key, b"123456", size=6)
    assert written.size == 6


@check("object")
async def keys_with_spaces_unicode_and_reserved_characters_round_trip(ctx: Ctx) -> None:
    # Not "a//b": SeaweedFS keeps objects in a file tree and lists that key as "a/b".
    names = ["a b", "ünïcødé", "plus+sign", "per%cent", "q?uery&amp=1", "tilde~", "<x>"]
    for name in names:
        key = ctx.key(f"odd/{name}")
        await put(ctx, key, name.encode())
        header, chunks = await get(ctx, key)
        assert (header.info.key, b"".join(chunks)) == (key, name.encode())
    page = await ctx.call("list_objects", ListObjectsRequest(prefix=ctx.key("odd/")))
    listed = sorted(o.key for o in page.objects)
    assert listed == sorted(ctx.key(f"odd/{n}") for n in names), listed
    for dotted in ("x/./y", "x/../y", ".."):  # HTTP would remove the segment: refused
        with expect_status(Status.INVALID_ARGUMENT):
            await put(ctx, ctx.key(f"odd/{dotted}"), b"x")
