"""Taking a slot of a connection pool's ``trio.Semaphore`` without a needless scheduling pass.

``trio.Semaphore.acquire()`` ends in ``cancel_shielded_checkpoint()`` even when a slot is free:
one whole pass of Trio's run loop per call, which a plugin calling its backend once per request
pays on every request (docs/benchmarks.md, the backends suite, issue 10). A pool whose callers
go on to wait on a socket anyway — their yield — can take a free slot at once.
"""

from __future__ import annotations

import trio

__all__ = ["take"]


async def take(slots: trio.Semaphore) -> None:
    """Take one of ``slots``, as ``await slots.acquire()`` does: a cancellation point (raises
    ``trio.Cancelled`` in a cancelled scope, taking nothing), then a free slot at once, without
    yielding; when none is free it waits in FIFO order with the other waiters, and cancellation
    while waiting takes none. The caller releases it with ``slots.release()``. It yields only
    when it waits: use it where the caller's next step blocks (on I/O) in any case."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        await slots.acquire()
