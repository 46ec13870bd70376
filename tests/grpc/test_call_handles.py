"""The call objects of prism.grpc.call_handles over real sockets, against a prism server."""

from __future__ import annotations

import trio
import trio.testing
from grpc_testkit import Parked, serving

from prism import grpc as pg


async def test_stream_call_cancel_from_another_task_ends_its_loop() -> None:
    service = Parked()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        call = channel.unary_stream("/test.Parked/One", b"", bytes)
        got: list[bytes] = []
        first = trio.Event()

        async def consume() -> None:
            async for message in call:
                got.append(message)
                first.set()

        with trio.fail_after(30):  # a hang guard only
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await first.wait()
                await trio.testing.wait_all_tasks_blocked()  # the loop waits for more
                call.cancel()
            await service.cancelled.wait()  # the RST_STREAM reached the server
        assert got == [b"first"]
        assert call.status is pg.Status.CANCELLED
