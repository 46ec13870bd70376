"""Raw bytes through the proxy without copies: counted, per process, for 1 MiB chunks.

A client (this process), the proxy (bench.servers.counted_proxy, its own process) and a
sidecar plugin (bench.servers.rawbytes_plugin) each count the copies they make of the payload
while the chunks go through (bench.copycount: every allocation of a large block, with memray).
docs/architecture.md's "Zero-copy path" says where each remaining copy is and why.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

# The counting harness lives with the benchmarks (the bench suite measures the same path); the
# repository root is not on the test run's path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import zerocopy_run as run
from bench.copycount import Copies, CopyCounter
from prism import grpc as pg

CHUNK = 1 << 20
COUNT = 8
PAYLOAD = CHUNK * COUNT


async def _counted(
    proxy: run.ProxyProcess, channel: pg.Channel, work: Callable[[], Awaitable[None]]
) -> dict[str, Copies]:
    await run.execute(channel, "copies.start", b"")
    await proxy.start_counting()
    with CopyCounter() as client:
        await work()
    plugin = Copies.from_dict(json.loads(await run.execute(channel, "copies.stop", b"")))
    counted = {"client": client.result, "proxy": await proxy.stop_counting(), "plugin": plugin}
    for role, copies in counted.items():
        print(role, copies.describe(PAYLOAD))
    return counted


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[run.ProxyProcess]:
    async with run.proxy_process(tmp_path) as proxy:
        yield proxy


async def test_frontdoor_execute_stream_copies_per_chunk(proxy: run.ProxyProcess) -> None:
    chunk = os.urandom(CHUNK)
    async with pg.open_channel(proxy.address) as channel:
        await run.sink(channel, chunk, 2)  # warm: connections open, windows grown
        answers: list[bytes] = []

        async def work() -> None:
            answers.append(await run.sink(channel, chunk, COUNT))

        copies = await _counted(proxy, channel, work)
    assert int.from_bytes(answers[0][:8], "big") == PAYLOAD
    # Sending makes no copy: the 5-byte prefix and the envelope's fields go beside the
    # payload, each DATA frame is a view of it, and writev sends them (bench.zerocopy_run's
    # requests are Pieces). Receiving makes two per process: the kernel's, into the buffer
    # os.read returns, and the message joined from the DATA frames it came in. The plugin
    # makes a third: its params are bytes of their own, sliced out of the message. A few
    # frames a read cuts in two go through h2's buffer (a few hundredths more).
    assert copies["client"].per(PAYLOAD) < 0.25  # main: 1.0 (each frame copied into h2's buffer)
    assert copies["proxy"].per(PAYLOAD) < 2.6  # main: 3.5 (that, and the params sliced out)
    assert copies["plugin"].per(PAYLOAD) < 3.6


async def test_frontdoor_execute_raw_params_copies_per_chunk(proxy: run.ProxyProcess) -> None:
    chunk = os.urandom(CHUNK)
    async with pg.open_channel(proxy.address) as channel:
        await run.execute(channel, "echo", chunk)

        async def work() -> None:
            for _ in range(COUNT):
                assert len(await run.execute(channel, "echo", chunk)) == CHUNK

        copies = await _counted(proxy, channel, work)
    # The chunk goes in and comes back: the proxy receives it twice (from the client, from the
    # plugin), two copies each, and sends it twice without one. Responses are read as requests
    # are (the client connection's fast path); the plugin sends its raw result behind its
    # envelope's fields (the SDK's Pieces). More frames are cut by reads on this path, whose
    # windows open and close per call: up to one copy's worth, through h2's buffer.
    # The client's count includes this test's own slice of raw_result out of each response.
    assert copies["proxy"].per(PAYLOAD) < 5.6  # main: 10.5
    assert copies["client"].per(PAYLOAD) < 4.0  # main: 7.1 (6.1 without the request's join)
    assert copies["plugin"].per(PAYLOAD) < 4.4  # main: 5.5 (the result joined to its fields)


async def test_frontdoor_streams_hold_memory_bounded_by_the_chunk(
    proxy: run.ProxyProcess,
) -> None:
    # 64 MiB each way, in 1 MiB chunks: into the plugin (sink), then out of it (source). Flow
    # control holds each process to a few chunks whatever the total: on main a stream of
    # messages larger than the window reopened it with every message, and the proxy queued
    # 26 of them (its peak RSS grew by 37 MiB). docs/benchmarks.md has 1 GiB (`bench zerocopy`).
    total_chunks = 64
    chunk = os.urandom(CHUNK)
    async with pg.open_channel(proxy.address) as channel:
        await run.sink(channel, chunk, 2)
        await run.source(channel, CHUNK, 2)
        pids = {"proxy": proxy.pid, "plugin": await run.plugin_pid(channel)}
        grown: dict[str, list[int]] = {role: [] for role in pids}

        async def measured(work: Awaitable[Any]) -> Any:
            before = {}
            for role, pid in pids.items():
                run.reset_peak(pid)
                before[role] = run.memory(pid)[0]
            result = await work
            for role, pid in pids.items():
                grown[role].append(run.memory(pid)[1] - before[role])
            return result

        answer = await measured(run.sink(channel, chunk, total_chunks))
        received = await measured(run.source(channel, CHUNK, total_chunks))
    assert int.from_bytes(answer[:8], "big") == total_chunks * CHUNK
    assert received == total_chunks * CHUNK
    print({role: [f"{size / 2**20:.1f} MiB" for size in sizes] for role, sizes in grown.items()})
    for role, sizes in grown.items():
        for size in sizes:
            assert size < 16 * CHUNK, (role, sizes)
