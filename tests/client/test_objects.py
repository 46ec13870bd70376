"""``prism.client.Objects`` through a real proxy to the objectstore plugin, as a sidecar (its
default deployment) and in-process, on a real SeaweedFS (the acceptance framework's fixture):
put from bytes, from an iterable and from an async iterable; read whole and by range; head,
list page by page, delete; a missing object; a put whose source fails stores nothing."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from client_testkit import OPEN, config, serving

import prism.client as pc
from prism.config import NamespaceConfig, PluginConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))

from backends import SeaweedServer


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedServer]:
    server = SeaweedServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sidecar", "in_process"])
async def objects(
    request: pytest.FixtureRequest, seaweed: SeaweedServer, tmp_path: Path
) -> AsyncIterator[pc.Objects]:
    namespace = NamespaceConfig(
        name="media",
        plugin=PluginConfig(name="objectstore", mode=request.param),
        config={"endpoint": seaweed.endpoint, "bucket": seaweed.BUCKET, "chunk_size": 65536},
        credentials=seaweed.credentials.as_map(),
        access=OPEN,
    )
    proxy_config = config(None, namespaces=(namespace,), runtime_dir=tmp_path)
    async with serving(proxy_config) as running, pc.connect(running.address) as client:
        yield client.objects("media")


async def test_objects_put_and_read_back_from_every_kind_of_source(objects: pc.Objects) -> None:
    data = bytes(range(256)) * 1000
    with trio.fail_after(60):
        written = await objects.put("a/bytes", data, content_type="x/y", chunk_size=10_000)
        assert written.size == len(data)
        assert await objects.read("a/bytes") == data

        pieces = [b"one ", b"two ", b"three"]
        await objects.put("a/iterable", pieces, metadata={"n": "3"})

        async def produce() -> AsyncIterator[bytes]:
            for piece in pieces:
                await trio.lowlevel.checkpoint()
                yield piece

        await objects.put("a/async", produce(), size=13)
        assert await objects.read("a/async") == b"one two three"
        info = await objects.head("a/iterable")
    assert (info.size, info.metadata, info.content_type) == (
        13,
        {"n": "3"},
        "application/octet-stream",
    )


async def test_objects_get_streams_chunks_and_ranges(objects: pc.Objects) -> None:
    data = bytes(range(256)) * 1024  # 4 chunks of 64 KiB
    with trio.fail_after(60):
        written = await objects.put("ranged", data)
        async with objects.get("ranged") as reader:
            assert (reader.info.size, reader.info.etag) == (len(data), written.etag)
            chunks = [chunk async for chunk in reader]
        assert [len(c) for c in chunks] == [65536] * 4
        async with objects.get("ranged", offset=100, length=10) as reader:
            assert (reader.offset, reader.length, reader.info.size) == (100, 10, len(data))
            assert await reader.read() == data[100:110]
        with pytest.raises(pc.OutOfRange):
            await objects.read("ranged", offset=len(data))


async def test_objects_list_pages_and_delete(objects: pc.Objects) -> None:
    with trio.fail_after(60):
        for name in ("c", "a", "b"):
            await objects.put(f"listed/{name}", name.encode())
        page = await objects.list("listed/", page_size=2)
        assert [o.key for o in page.objects] == ["listed/a", "listed/b"]
        assert page.next_page_token
        every = [o.key async for o in objects.list_all("listed/", page_size=2)]
        assert every == ["listed/a", "listed/b", "listed/c"]
        await objects.delete("listed/b")
        with pytest.raises(pc.NotFound):
            await objects.head("listed/b")
        await objects.delete("listed/b")  # already gone: fine
        with pytest.raises(pc.NotFound):
            async with objects.get("listed/b"):
                pass


async def test_objects_a_failing_source_stores_nothing(objects: pc.Objects) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        raise OSError("the source broke")

    with trio.fail_after(60):
        with pytest.raises(OSError, match="the source broke"):
            await objects.put("never", broken())
        with pytest.raises(pc.NotFound):
            await objects.head("never")
        with pytest.raises(pc.InvalidArgument, match="size"):
            await objects.put("never", b"abc", size=4)


async def test_objects_put_from_a_file_sends_its_bytes_from_its_position(
    objects: pc.Objects, tmp_path: Path
) -> None:
    # 9 MiB from position 100: more than one 8 MiB part, a multipart upload of known size
    # (the client fills in the size from the file).
    data = bytes(range(256)) * (9 * 4096 + 1)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with path.open("rb") as file, trio.fail_after(120):
        file.seek(100)
        written = await objects.put("a/file", file)
        assert (written.size, written.etag[-2:]) == (len(data) - 100, "-2")
        assert await objects.read("a/file") == data[100:]
