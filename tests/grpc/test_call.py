"""prism.grpc.call: how a handler's exception becomes its RPC's status, and what is logged."""

from __future__ import annotations

import logging

import pytest
import trio
from grpc_testkit import serving

from prism import grpc as pg
from prism.grpc.call import error_from_exception

LOGGER = "prism.grpc.server"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _trace_id(message: str) -> str:
    return message.rsplit("trace id ", 1)[1].split(")")[0]


def test_error_from_exception_keeps_a_grpc_error_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    error = pg.NotFound("no such key")
    assert error_from_exception(error, "/s/M", TRACE) is error
    grouped = ExceptionGroup("tasks", [ExceptionGroup("inner", [error])])
    assert error_from_exception(grouped, "/s/M", TRACE) is error
    assert caplog.records == []


def test_error_from_exception_bug_is_unknown_and_logged_with_its_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    error = error_from_exception(KeyError("password=hunter2"), "/s/M", TRACE)
    assert error.status is pg.Status.UNKNOWN
    assert "hunter2" not in error.message
    [record] = caplog.records
    assert _trace_id(error.message) == TRACE
    assert f"trace id {TRACE}" in record.getMessage()
    assert record.__dict__["trace_id"] == TRACE
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


def test_error_from_exception_group_with_a_grpc_error_still_logs_the_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    deliberate = pg.NotFound("no such key")
    bug = ZeroDivisionError("division by zero in a sibling task")
    group = ExceptionGroup("tasks", [deliberate, ExceptionGroup("more", [bug])])
    assert error_from_exception(group, "/s/M", TRACE) is deliberate
    [record] = caplog.records
    assert "trace id" in record.getMessage()
    assert "/s/M" in record.getMessage()
    assert "NOT_FOUND" in record.getMessage()
    logged = record.exc_info[1] if record.exc_info else None
    assert isinstance(logged, BaseExceptionGroup)
    assert logged.exceptions[0].exceptions[0] is bug  # type: ignore[attr-defined]


class Siblings(pg.Service):
    name = "test.Siblings"

    @pg.unary_unary("Both", bytes, bytes)
    async def both(self, request: bytes, call: pg.ServerCall) -> bytes:
        async def deliberate() -> None:
            raise pg.FailedPrecondition("not ready")

        async def buggy() -> None:
            {}["missing"]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliberate)
            nursery.start_soon(buggy)
        return b""  # pragma: no cover


async def test_server_handler_group_with_status_and_bug_logs_the_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    async with serving(Siblings()) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.FailedPrecondition, match="not ready"):
            await channel.unary_unary("/test.Siblings/Both", b"", bytes)
    [record] = [r for r in caplog.records if "trace id" in r.getMessage()]
    assert "/test.Siblings/Both" in record.getMessage()
    assert record.exc_info is not None
    assert "KeyError" in repr(record.exc_info[1])
