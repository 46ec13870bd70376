"""prism.sdk.slots.take: a pool's semaphore slot, taken at once when free, waited for in FIFO
order when not, and never kept by a caller that was cancelled."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from prism.sdk import slots


async def test_take_a_free_slot_without_letting_another_task_run() -> None:
    semaphore = trio.Semaphore(2)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await slots.take(semaphore)
        seen = list(ran)  # Semaphore.acquire() would have yielded: "other" ran meanwhile
    assert seen == []
    assert semaphore.value == 1


async def test_take_in_a_cancelled_scope_raises_and_takes_nothing() -> None:
    semaphore = trio.Semaphore(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await slots.take(semaphore)
        pytest.fail("take did not raise Cancelled")
    assert scope.cancelled_caught
    assert semaphore.value == 1


async def test_take_waits_in_order_and_a_cancelled_waiter_takes_no_slot() -> None:
    semaphore = trio.Semaphore(1)
    await slots.take(semaphore)
    order: list[str] = []
    second = trio.CancelScope()

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await slots.take(semaphore)
            order.append(name)
            semaphore.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "third", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        second.cancel()
        await trio.testing.wait_all_tasks_blocked()
        semaphore.release()
    assert order == ["first", "third"]
    assert second.cancelled_caught
    assert semaphore.value == 1
