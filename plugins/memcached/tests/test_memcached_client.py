"""The connection pool (prism_plugin_memcached.client.Pool) against a real memcached: a caller
beyond the pool's size waits for a connection, and one cancelled before or while waiting takes
none with it (the pool takes a free slot without a trip through the scheduler)."""

from __future__ import annotations

import os
import signal

import trio
import trio.testing
from memcached_server import MemcachedServer, config
from prism_plugin_memcached import MemcachedPlugin

from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism.sdk.testing import PluginHarness


def one_connection(server: MemcachedServer) -> PluginHarness:
    return PluginHarness(
        MemcachedPlugin,
        config=config(server, pool_size=1, command_timeout_ms=600_000),
    )


async def test_pool_a_caller_cancelled_while_waiting_takes_no_connection(
    memcached_server: MemcachedServer,
) -> None:
    """The server paused (SIGSTOP) with the only connection's get in flight; a second caller
    waits for the connection and is cancelled; after SIGCONT the first get is answered and a
    third gets the connection (a slot the cancelled caller had kept would hang it)."""
    async with one_connection(memcached_server) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        process = memcached_server.server.process
        assert process is not None
        answered: list[bytes] = []
        waiter = trio.CancelScope()

        async def get() -> None:
            answered.append((await h.execute("get", GetRequest(key="k"))).value)  # type: ignore[union-attr]

        async def wait_for_the_connection() -> None:
            with waiter:
                await get()

        os.kill(process.pid, signal.SIGSTOP)
        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(get)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(wait_for_the_connection)
                    await trio.testing.wait_all_tasks_blocked()
                    waiter.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    os.kill(process.pid, signal.SIGCONT)
                await get()
        finally:
            os.kill(process.pid, signal.SIGCONT)
        assert waiter.cancelled_caught
        assert answered == [b"v", b"v"]


async def test_pool_a_call_cancelled_before_it_starts_leaves_the_pool_whole(
    memcached_server: MemcachedServer,
) -> None:
    async with one_connection(memcached_server) as h:
        await h.execute("set", SetRequest(key="k", value=b"v"))
        with trio.CancelScope() as scope:
            scope.cancel()
            await h.execute("get", GetRequest(key="k"))
        assert scope.cancelled_caught
        with trio.fail_after(30):
            got = await h.execute("get", GetRequest(key="k"))
        assert got.value == b"v"  # type: ignore[union-attr]
