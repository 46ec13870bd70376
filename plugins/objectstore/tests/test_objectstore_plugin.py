"""The objectstore plugin on a real SeaweedFS (the acceptance framework's fixture), through the
SDK's harness: what the conformance suite does not cover — config and credential checks,
multipart uploads part by part (and their abort), the size check, bucket rules, the mapping of
S3's errors to statuses, that credentials never reach an error; that a put of known size
streams its parts (holding a few chunks, not parts) and that bytes altered between the plugin
and the server fail the put with DATA_LOSS (a corrupting proxy in front of SeaweedFS)."""

from __future__ import annotations

import re
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "acceptance"))

from backends import AccessKey, SeaweedServer, free_port
from corrupting_proxy import CorruptingProxy
from prism_plugin_objectstore import ObjectStorePlugin
from prism_plugin_objectstore.plugin import MIN_PART_SIZE
from prism_plugin_objectstore.s3 import error_for

from prism._proto.prism.data.v1 import (
    GetObjectHeader,
    GetObjectRequest,
    HeadObjectRequest,
    ListObjectsRequest,
    PutObjectRequest,
    PutObjectResponse,
)
from prism.sdk import (
    DataLoss,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Status,
    Unauthenticated,
    Unavailable,
)
from prism.sdk.testing import PluginHarness

PART = MIN_PART_SIZE
MIB = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedServer]:
    seaweed = SeaweedServer()
    try:
        seaweed.start()
        yield seaweed
    finally:
        seaweed.stop()


def harness(server: SeaweedServer, **config: Any) -> PluginHarness:
    settings = {"endpoint": server.endpoint, "bucket": server.BUCKET, **config}
    return PluginHarness(
        ObjectStorePlugin, config=settings, credentials=server.credentials.as_map()
    )


def uploads_in_progress(server: SeaweedServer) -> list[str]:
    listing = server.s3("GET", f"/{server.BUCKET}?uploads=").text
    return re.findall(r"<Key>([^<]*)</Key>", listing)


async def put(h: PluginHarness, key: str, chunks: list[bytes], **fields: Any) -> Any:
    async with h.stream("put_object", PutObjectRequest(key=key, **fields)) as stream:
        for chunk in chunks:
            await stream.send(chunk)
        await stream.end()
        with trio.fail_after(60):
            return await stream.receive()


async def get(h: PluginHarness, key: str, **fields: Any) -> tuple[GetObjectHeader, bytes]:
    async with h.stream("get_object", GetObjectRequest(key=key, **fields)) as stream:
        with trio.fail_after(60):
            first = await stream.receive()
            assert isinstance(first, bytes)
            body = [chunk async for chunk in stream]
    return GetObjectHeader.parse(first), b"".join(body)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"endpoint": "ftp://x"}, "endpoint"),
        ({"part_size": 1024}, "part_size"),
        ({"chunk_size": 8 << 20}, "chunk_size"),
        ({"request_timeout_ms": -1}, "request_timeout_ms"),
        ({"bucket": "No_Such"}, "bucket"),
        ({"bucket": "", "create_bucket": True}, "create_bucket"),
    ],
)
async def test_objectstore_initialize_refuses_bad_config(
    server: SeaweedServer, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        async with harness(server, **config):
            pass


async def test_objectstore_initialize_needs_both_credentials_unless_anonymous(
    server: SeaweedServer,
) -> None:
    config = {"endpoint": server.endpoint, "bucket": server.BUCKET}
    key_only = {"access_key_id": server.credentials.username}
    with pytest.raises(InvalidArgument, match="credential"):
        async with PluginHarness(ObjectStorePlugin, config=config, credentials=key_only):
            pass
    with pytest.raises(PermissionDenied):  # unsigned requests to a server that signs
        async with PluginHarness(ObjectStorePlugin, config={**config, "anonymous": True}):
            pass


async def test_objectstore_wrong_secret_is_unauthenticated_and_never_shown(
    server: SeaweedServer,
) -> None:
    wrong = AccessKey(server.credentials.username, "wrong-" + server.credentials.password)
    config = {"endpoint": server.endpoint, "bucket": server.BUCKET}
    with pytest.raises(Unauthenticated) as caught:
        async with PluginHarness(ObjectStorePlugin, config=config, credentials=wrong.as_map()):
            pass
    assert wrong.password not in str(caught.value)


async def test_objectstore_initialize_without_a_server_is_unavailable() -> None:
    config = {"endpoint": f"http://127.0.0.1:{free_port()}", "anonymous": True}
    with pytest.raises(Unavailable):
        async with PluginHarness(ObjectStorePlugin, config=config):
            pass


async def test_objectstore_missing_bucket_is_not_found_unless_created(
    server: SeaweedServer,
) -> None:
    with pytest.raises(NotFound, match="no such bucket"):
        async with harness(server, bucket="never-made"):
            pass
    async with harness(server, bucket="made-at-initialize", create_bucket=True) as h:
        written = await put(h, "k", [b"in a new bucket"])
        assert written.size == 15
    async with harness(server, bucket="made-at-initialize", create_bucket=True):
        pass  # the second time it exists already


async def test_objectstore_multipart_upload_parts_and_stores_every_byte(
    server: SeaweedServer,
) -> None:
    data = bytes(range(256)) * (2 * PART // 256) + b"tail"  # two parts and a bit
    async with harness(server, part_size=PART) as h:
        chunks = [data[i : i + 700_000] for i in range(0, len(data), 700_000)]
        written = await put(h, "multi", chunks, size=len(data))
        assert isinstance(written, PutObjectResponse)
        assert written.size == len(data)
        assert written.etag.endswith("-3")  # S3's multipart ETag: <md5>-<parts>
        header, body = await get(h, "multi")
    assert body == data
    assert header.info.etag == written.etag  # type: ignore[union-attr]
    stored = server.s3("GET", f"/{server.BUCKET}/multi").content
    assert stored == data


async def test_objectstore_exactly_one_part_is_a_single_put(server: SeaweedServer) -> None:
    async with harness(server, part_size=PART) as h:
        written = await put(h, "one-part", [b"a" * PART])
    assert "-" not in written.etag  # not a multipart ETag
    assert uploads_in_progress(server) == []


async def test_objectstore_wrong_size_stores_nothing_and_aborts_the_upload(
    server: SeaweedServer,
) -> None:
    async with harness(server, part_size=PART) as h:
        with pytest.raises(InvalidArgument, match="size"):
            await put(h, "short", [b"x" * PART, b"y" * 10], size=PART + 11)
        with pytest.raises(InvalidArgument, match="more bytes"):
            await put(h, "long", [b"x" * 10], size=5)
        with pytest.raises(NotFound):
            await h.execute("head_object", HeadObjectRequest(key="short"))
    assert "short" not in uploads_in_progress(server)


async def test_objectstore_cancelled_multipart_put_leaves_no_parts(server: SeaweedServer) -> None:
    async with harness(server, part_size=PART) as h:
        async with h.stream("put_object", PutObjectRequest(key="cancelled")) as stream:
            await stream.send(b"x" * PART)
            await stream.send(b"y" * PART)  # the first part goes up meanwhile
            with trio.fail_after(60):
                while "cancelled" not in uploads_in_progress(server):  # noqa: ASYNC110
                    await trio.sleep(0.05)
        # Leaving the block cancelled the stream: the upload is aborted, shielded.
        with trio.fail_after(60):
            while "cancelled" in uploads_in_progress(server):  # noqa: ASYNC110
                await trio.sleep(0.05)
        with pytest.raises(NotFound):
            await h.execute("head_object", HeadObjectRequest(key="cancelled"))


async def test_objectstore_request_checks(server: SeaweedServer) -> None:
    async with harness(server) as h:
        with pytest.raises(InvalidArgument, match="key"):
            await h.execute("head_object", HeadObjectRequest(key=""))
        with pytest.raises(InvalidArgument, match="bucket"):
            await h.execute("head_object", HeadObjectRequest(bucket="A_B", key="k"))
        with pytest.raises(InvalidArgument, match="metadata key"):
            await put(h, "k", [b"1"], metadata={"Upper": "x"})
        with pytest.raises(InvalidArgument, match="ASCII"):
            await put(h, "k", [b"1"], metadata={"k": "é"})
        with pytest.raises(InvalidArgument, match="page_size"):
            await h.execute("list_objects", ListObjectsRequest(page_size=1001))
        with pytest.raises(InvalidArgument, match="negative"):
            await get(h, "k", offset=-1)
    async with harness(server, bucket="") as h:
        with pytest.raises(InvalidArgument, match="no bucket"):
            await h.execute("head_object", HeadObjectRequest(key="k"))


async def test_objectstore_range_past_the_end_is_out_of_range(server: SeaweedServer) -> None:
    async with harness(server) as h:
        await put(h, "short", [b"0123456789"])
        with pytest.raises(OutOfRange):
            await get(h, "short", offset=10)
        header, body = await get(h, "short", offset=8, length=100)
    assert (header.offset, header.length, body) == (8, 2, b"89")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "NoSuchKey", Status.NOT_FOUND),
        (404, "NoSuchBucket", Status.NOT_FOUND),
        (403, "AccessDenied", Status.PERMISSION_DENIED),
        (403, "SignatureDoesNotMatch", Status.UNAUTHENTICATED),
        (403, "InvalidAccessKeyId", Status.UNAUTHENTICATED),
        (416, "InvalidRange", Status.OUT_OF_RANGE),
        (400, "EntityTooSmall", Status.INVALID_ARGUMENT),
        (400, "BadDigest", Status.DATA_LOSS),
        (409, "BucketAlreadyOwnedByYou", Status.ALREADY_EXISTS),
        (412, "PreconditionFailed", Status.FAILED_PRECONDITION),
        (503, "SlowDown", Status.UNAVAILABLE),
        (500, "", Status.UNAVAILABLE),
        (404, "", Status.NOT_FOUND),  # a HEAD: no body, no code
    ],
)
def test_objectstore_s3_errors_map_to_statuses(status: int, code: str, expected: Status) -> None:
    assert error_for(status, code, "", "object 'k'").status == expected


async def test_objectstore_put_of_unknown_size_is_buffered_part_by_part(
    server: SeaweedServer,
) -> None:
    data = bytes(range(256)) * (2 * PART // 256) + b"end"
    chunks = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
    async with harness(server, part_size=PART) as h:
        written = await put(h, "unknown-size", chunks)  # no size: parts gathered as they fill
        assert (written.size, written.etag[-2:]) == (len(data), "-3")
        _, body = await get(h, "unknown-size")
    assert body == data


@pytest.mark.parametrize(("sent", "message"), [(-1, "bytes came"), (1, "more bytes")])
async def test_objectstore_streamed_put_of_another_size_stores_nothing(
    server: SeaweedServer, sent: int, message: str
) -> None:
    size = 2 * PART + 100
    data = b"z" * (size + sent)
    chunks = [data[i : i + MIB] for i in range(0, len(data), MIB)]
    async with harness(server, part_size=PART) as h:
        with pytest.raises(InvalidArgument, match=message):
            await put(h, f"streamed-{sent}", chunks, size=size)
        with pytest.raises(NotFound):
            await h.execute("head_object", HeadObjectRequest(key=f"streamed-{sent}"))
    assert f"streamed-{sent}" not in uploads_in_progress(server)


async def test_objectstore_streamed_put_holds_a_few_chunks_not_its_parts(
    server: SeaweedServer,
) -> None:
    # Parts of 16 MiB, two at once: buffering them would hold 32 MiB and more (tracemalloc
    # counts every bytes object the put makes, on the harness's side too).
    part = 16 * MIB
    chunk = b"q" * MIB
    size = 4 * part + 5
    chunks = [chunk] * (size // MIB) + [chunk[: size % MIB]]
    async with harness(server, part_size=part) as h:
        tracemalloc.start()
        try:
            written = await put(h, "bounded", chunks, size=size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (written.size, written.etag[-2:]) == (size, "-5")
        info = await h.execute("head_object", HeadObjectRequest(key="bounded"))
    assert info.size == size  # type: ignore[union-attr]
    assert peak < part // 2, f"a streamed put held {peak / MIB:.1f} MiB at its peak"


@pytest.fixture
async def corrupting(server: SeaweedServer) -> AsyncIterator[CorruptingProxy]:
    proxy = CorruptingProxy("127.0.0.1", server.server.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("size", "known"),
    [(2 * PART + 7, True), (2 * PART + 7, False), (1000, False), (1000, True)],
    ids=["streamed-parts", "buffered-parts", "single-put", "single-put-known-size"],
)
async def test_objectstore_bytes_altered_on_the_way_are_data_loss_and_nothing_is_stored(
    server: SeaweedServer, corrupting: CorruptingProxy, size: int, known: bool
) -> None:
    """Streamed parts: the ETag (the MD5 of what SeaweedFS stored) is not the MD5 of what was
    sent. Buffered parts and single PUTs: SeaweedFS refuses the body its Content-MD5 does not
    match (BadDigest)."""
    key = f"altered-{size}-{known}"
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunks = [data[i : i + MIB] for i in range(0, len(data), MIB)]
    async with harness(server, endpoint=corrupting.endpoint, part_size=PART) as h:
        with pytest.raises(DataLoss, match="other bytes"):
            await put(h, key, chunks, size=size if known else None)
    assert corrupting.corrupted >= 1
    async with harness(server) as direct:
        with pytest.raises(NotFound):
            await direct.execute("head_object", HeadObjectRequest(key=key))
    assert key not in uploads_in_progress(server)


async def test_objectstore_skip_etag_check_trusts_the_backend(
    server: SeaweedServer, corrupting: CorruptingProxy
) -> None:
    """The check is what catches a streamed part altered on the way: without it, the altered
    bytes are stored (what `skip_etag_check` trades for servers whose ETags are not MD5s)."""
    size = 2 * PART + 7
    data = b"s" * size
    chunks = [data[i : i + MIB] for i in range(0, len(data), MIB)]
    config = {"endpoint": corrupting.endpoint, "part_size": PART, "skip_etag_check": True}
    async with harness(server, **config) as h:
        written = await put(h, "unchecked", chunks, size=size)
    assert written.size == size
    stored = server.s3("GET", f"/{server.BUCKET}/unchecked").content
    assert len(stored) == size
    assert stored != data
