"""prism.sdk.aio: an asyncio loop in a thread of its own, driven from Trio."""

from __future__ import annotations

import asyncio

import pytest
import trio

from prism.sdk.aio import AsyncioLoop
from prism.sdk.errors import Unavailable


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def test_asyncio_loop_runs_a_coroutine_and_returns_its_result() -> None:
    loop = AsyncioLoop("test-aio", "Test")
    loop.start()
    try:
        with trio.fail_after(30):
            assert await loop.run(_double, 21) == 42
    finally:
        await loop.stop()


async def test_asyncio_loop_cancellation_cancels_the_asyncio_task() -> None:
    loop = AsyncioLoop("test-aio", "Test")
    loop.start()
    cancelled = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            token.run_sync_soon(cancelled.set)
            raise

    try:
        with trio.move_on_after(0.2):
            await loop.run(forever)
        with trio.fail_after(30):
            await cancelled.wait()
    finally:
        await loop.stop()


async def test_asyncio_loop_once_stopped_is_unavailable_naming_its_client() -> None:
    loop = AsyncioLoop("test-aio", "Test")
    loop.start()
    await loop.stop()
    with pytest.raises(Unavailable, match="Test client"):
        await loop.run(_double, 1)
