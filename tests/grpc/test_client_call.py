"""Client call objects against a real prism server: leaving a call from another task."""

from __future__ import annotations

import trio
from grpc_testkit import serving

from prism import grpc as pg


class Parked(pg.Service):
    """Handlers that send one message (or read nothing) and then wait until cancelled."""

    name = "test.Parked"

    def __init__(self) -> None:
        self.cancelled = trio.Event()

    @pg.unary_stream("One", bytes, bytes)
    async def one(self, request: bytes, call: pg.ServerCall) -> None:
        await call.send_message(b"first")
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()

    @pg.stream_unary("Deaf", bytes, bytes)
    async def deaf(self, call: pg.ServerCall) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


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


async def test_client_call_close_from_another_task_wakes_a_waiting_receiver() -> None:
    service = Parked()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        received: list[bytes | None] = []
        async with channel.stream("/test.Parked/One", bytes) as call:
            await call.send_message(b"")
            await call.end()
            assert await call.receive_message() == b"first"

            async def receive() -> None:
                received.append(await call.receive_message())

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    await trio.testing.wait_all_tasks_blocked()
                    call.close()
                await service.cancelled.wait()
        assert received == [None]
        assert call.status is pg.Status.CANCELLED
        # The channel is still usable.
        async for message in channel.unary_stream("/test.Parked/One", b"", bytes):
            assert message == b"first"
            break


async def test_client_call_close_from_another_task_wakes_a_sender_held_by_flow_control() -> None:
    # The handler never reads: the sender fills the server's window and waits for it.
    service = Parked()
    options = pg.ServerOptions(initial_window_size=65535)
    async with serving(service, options=options) as (_, target), pg.open_channel(target) as ch:
        sent = 0
        async with ch.stream("/test.Parked/Deaf", bytes) as call:

            async def send() -> None:
                nonlocal sent
                while True:
                    await call.send_message(b"x" * 16384)
                    sent += 1
                    if call.status is not None:
                        return

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    await trio.testing.wait_all_tasks_blocked()
                    assert call.status is None  # the sender is parked, not finished
                    call.close()
                await service.cancelled.wait()
        assert sent > 0
        assert call.status is pg.Status.CANCELLED
