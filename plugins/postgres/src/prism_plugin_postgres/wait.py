"""Trio wait functions for psycopg's non-blocking libpq core.

psycopg 3 splits every protocol exchange into a generator (``psycopg.generators``) that does the
libpq calls and yields what it would block on — ``Wait.R``, ``Wait.W`` or ``Wait.RW`` (for a
connection attempt, ``(fileno, wait)`` pairs) — and a *wait function* that waits for the socket
and sends the ``Ready`` state back. psycopg ships blocking and asyncio wait functions
(``psycopg.waiting``); these are the Trio ones, so the plugin runs libpq's C protocol code on
the event loop itself: no worker thread per query, no second event loop (the README has the
measurements that chose this over threads and over trio-asyncio).

Cancellation: a wait is a Trio checkpoint; cancelling it abandons the generator where it was.
The connection is then mid-exchange — ``PgConnection`` cancels the statement on the server and
drains or closes the connection (see connection.py).
"""

from __future__ import annotations

import select
from typing import TypeVar

import trio
from psycopg.abc import PQGen, PQGenConn
from psycopg.waiting import Ready, Wait

__all__ = ["readable_now", "wait", "wait_conn"]

RV = TypeVar("RV")

_READY_R = Ready.R
_READY_W = Ready.W
_WAIT_R = Wait.R
_WAIT_W = Wait.W


def _poll(fileno: int, wait: int) -> int:
    """The socket's readiness right now (poll with no timeout): cheaper than a trip through
    the event loop for a socket that is nearly always writable."""
    events = (select.POLLIN if wait & _WAIT_R else 0) | (select.POLLOUT if wait & _WAIT_W else 0)
    poller = select.poll()
    poller.register(fileno, events)
    ready = 0
    for _, revents in poller.poll(0):
        if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
            ready |= _READY_R
        if revents & select.POLLOUT:
            ready |= _READY_W
    return ready & ((_READY_R if wait & _WAIT_R else 0) | (_READY_W if wait & _WAIT_W else 0))


def readable_now(fileno: int) -> bool:
    """Whether the server sent something (data, or end-of-file) that was not read yet."""
    return bool(_poll(fileno, _WAIT_R))


async def _either(fileno: int) -> int:
    """Wait until ``fileno`` is readable or writable (libpq flushing a large message while the
    server may be sending: it must read to avoid a deadlock)."""
    ready = 0
    async with trio.open_nursery() as nursery:

        async def readable() -> None:
            nonlocal ready
            await trio.lowlevel.wait_readable(fileno)
            ready |= _READY_R
            nursery.cancel_scope.cancel()

        async def writable() -> None:
            nonlocal ready
            await trio.lowlevel.wait_writable(fileno)
            ready |= _READY_W
            nursery.cancel_scope.cancel()

        nursery.start_soon(readable)
        nursery.start_soon(writable)
    return ready


async def wait(gen: PQGen[RV], fileno: int) -> RV:
    """Run ``gen`` (a ``psycopg.generators`` exchange on a connection whose socket is
    ``fileno``) to completion and return its value. Cancellation abandons it mid-exchange."""
    try:
        state = next(gen)
        while True:
            if state == _WAIT_R:
                await trio.lowlevel.wait_readable(fileno)
                state = gen.send(_READY_R)
                continue
            # A write (or read-or-write) wait: the socket is nearly always writable at once.
            ready = _poll(fileno, state)
            if not ready:
                if state == _WAIT_W:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = _READY_W
                else:
                    ready = await _either(fileno)
            state = gen.send(ready)
    except StopIteration as done:
        result: RV = done.value
        return result


async def wait_conn(gen: PQGenConn[RV]) -> RV:
    """Run a connection generator (it yields ``(fileno, wait)``: the socket may change while
    libpq tries addresses) to completion. Cancellation abandons the attempt; the caller closes
    the half-open connection."""
    try:
        fileno, state = next(gen)
        while True:
            if state & _WAIT_W:
                await trio.lowlevel.wait_writable(fileno)
                fileno, state = gen.send(_READY_W)
            else:
                await trio.lowlevel.wait_readable(fileno)
                fileno, state = gen.send(_READY_R)
    except StopIteration as done:
        result: RV = done.value
        return result
