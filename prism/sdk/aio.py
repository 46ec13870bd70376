"""An asyncio event loop in a thread of its own, and Trio tasks awaiting its coroutines.

For plugins whose backend client runs only on asyncio (nats-py, aiokafka) while the plugin runs
on Trio (in-process in the proxy, or in a sidecar process). Every object of such a client lives
on this loop; Trio code hands it coroutines with :meth:`AsyncioLoop.run` and waits without
blocking its own thread: the asyncio side wakes the Trio task through the Trio token
(``run_sync_soon`` is the thread-safe way in), so no worker thread waits per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

from prism.sdk.errors import Unavailable

__all__ = ["AsyncioLoop", "Pending"]

T = TypeVar("T")


class Pending(Generic[T]):
    """A coroutine submitted to the loop; its result is awaited from Trio."""

    def __init__(self, future: concurrent.futures.Future[T], client: str) -> None:
        self.future = future
        self._client = client
        self._done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._done.set)

        future.add_done_callback(wake)

    async def result(self) -> T:
        """Wait for the coroutine's result (or its exception). Cancellation abandons the wait
        and leaves the coroutine running: :meth:`cancel` it, or await it again."""
        await self._done.wait()
        try:
            return self.future.result()
        except concurrent.futures.CancelledError:
            raise Unavailable(f"the {self._client} client's event loop stopped") from None

    def cancel(self) -> None:
        self.future.cancel()


class AsyncioLoop:
    """The loop and its thread; ``start`` once, ``stop`` once (idempotent). ``client`` names the
    backend's client in errors ("the NATS client's event loop stopped")."""

    def __init__(self, name: str, client: str = "backend") -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def start(self) -> None:
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Pending[T]:
        if self.loop.is_closed() or not self._thread.is_alive():
            coroutine.close()
            raise Unavailable(f"the {self.client} client's event loop stopped")
        return Pending(asyncio.run_coroutine_threadsafe(coroutine, self.loop), self.client)

    async def run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> T:
        """``await func(*args, **kw)`` on the loop. Cancellation cancels the asyncio task."""
        pending = self.submit(func(*args, **kw))
        try:
            return await pending.result()
        except trio.Cancelled:
            pending.cancel()
            raise

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """Run a plain function on the loop (thread-safe; the client's objects are not)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(func, *args)

    async def stop(self) -> None:
        """Stop the loop (its remaining tasks are cancelled) and wait for the thread, in a
        worker thread so Trio keeps running. Cancellation abandons the wait."""
        if not self.loop.is_closed() and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread.is_alive():
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)
