"""A nursery for context managers whose body is the caller's code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_nursery_unwrapped() -> AsyncIterator[trio.Nursery]:
    """``trio.open_nursery()``, except that an exception raised by the body alone (no child task
    failed) comes out as itself rather than in an ``ExceptionGroup``.

    ``async with open_plugin(...)`` and the test harness hide a nursery inside; a caller who writes
    ``with pytest.raises(NotFound)`` around them should not have to know it is there.
    """
    body_error: BaseException | None = None
    unwrap = False
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_error = exc
                raise
    except BaseExceptionGroup as group:
        if body_error is None or list(group.exceptions) != [body_error]:
            raise
        unwrap = True
    if unwrap:
        assert body_error is not None
        # Raised outside the except block so the group does not become its __context__.
        raise body_error
