"""prism.grpc: an internal error is reported under the call's W3C trace id, over real sockets
to a grpcio client: the id in the client's message is its ``traceparent``'s (or one the server
made, when it sent none or an invalid one), and the log record with the traceback carries the
same id in its message and as its ``trace_id`` field."""

from __future__ import annotations

import logging
import re

import grpc
import pytest
import trio
from grpc_testkit import serving

from prism import grpc as pg
from prism.grpc import traceid

LOGGER = "prism.grpc.server"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
ID_IN_MESSAGE = re.compile(r"\(trace id ([0-9a-f]{32})\)\Z")


class Faulty(pg.Service):
    name = "test.Faulty"

    @pg.unary_unary("Crash", bytes, bytes)
    async def crash(self, request: bytes, call: pg.ServerCall) -> bytes:
        raise RuntimeError("password=hunter2")

    @pg.unary_unary("Fine", bytes, bytes)
    async def fine(self, request: bytes, call: pg.ServerCall) -> bytes:
        return request


class BuggyBefore(pg.ServerInterceptor):
    async def before(self, call: pg.ServerCall) -> None:
        if call.method.endswith("/Fine"):
            raise ZeroDivisionError("a bug in an interceptor")


def grpcio_call(target: str, method: str, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    """The error a grpcio client gets for ``method`` (in a thread: grpcio blocks)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        try:
            call(b"x", metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc
    raise AssertionError(f"{method} did not fail")


async def failed_call(
    method: str,
    metadata: list[tuple[str, str]],
    interceptors: list[pg.ServerInterceptor] | None = None,
) -> tuple[grpc.StatusCode, str]:
    async with serving(Faulty(), interceptors=interceptors or []) as (_, target):
        with trio.fail_after(60):
            error = await trio.to_thread.run_sync(grpcio_call, target, method, metadata)
    return error.code(), error.details()


def logged_under(caplog: pytest.LogCaptureFixture, trace_id: str) -> logging.LogRecord:
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"trace id {trace_id}" in record.getMessage()
    assert record.__dict__["trace_id"] == trace_id
    assert record.exc_info is not None
    return record


@pytest.mark.parametrize(
    ("method", "interceptors"),
    [("/test.Faulty/Crash", []), ("/test.Faulty/Fine", [BuggyBefore()])],
    ids=["handler", "interceptor"],
)
async def test_internal_error_carries_the_traceparents_trace_id(
    method: str, interceptors: list[pg.ServerInterceptor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    code, details = await failed_call(method, [("traceparent", PARENT)], interceptors)
    assert code is grpc.StatusCode.UNKNOWN
    assert details == f"internal error in {method} (trace id {TRACE})"
    record = logged_under(caplog, TRACE)
    assert "hunter2" not in details
    assert record.exc_info is not None
    assert record.exc_info[0] in (RuntimeError, ZeroDivisionError)


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01")],  # all-zero trace id: invalid
        [("traceparent", PARENT.upper())],  # upper-case hex: invalid
    ],
    ids=["none", "zero", "upper-case"],
)
async def test_without_a_valid_traceparent_the_error_has_a_new_trace_id(
    metadata: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    code, details = await failed_call("/test.Faulty/Crash", metadata)
    assert code is grpc.StatusCode.UNKNOWN
    match = ID_IN_MESSAGE.search(details)
    assert match is not None, details
    trace_id = match.group(1)
    assert trace_id not in (TRACE, traceid.ZERO_TRACE)
    logged_under(caplog, trace_id)


async def test_interceptor_failing_after_the_call_is_logged_under_its_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran = trio.Event()

    class BuggyAfter(pg.ServerInterceptor):
        def after(self, call: pg.ServerCall, outcome: pg.CallOutcome) -> None:
            ran.set()  # the server logs what this raises before any other task runs
            raise KeyError("after")

    caplog.set_level(logging.ERROR, logger=LOGGER)
    async with (
        serving(Faulty(), interceptors=[BuggyAfter()]) as (_, target),
        pg.open_channel(target) as channel,
    ):
        # The outcome stands: the call succeeded.
        assert (
            await channel.unary_unary(
                "/test.Faulty/Fine", b"ok", bytes, metadata=[("traceparent", PARENT)]
            )
            == b"ok"
        )
        with trio.fail_after(30):  # after() runs once the response is out
            await ran.wait()
    logged_under(caplog, TRACE)


def test_traceid_parse_is_strict() -> None:
    assert traceid.parse(PARENT) == (TRACE, "00f067aa0ba902b7", 1)
    assert traceid.parse(f"01-{TRACE}-00f067aa0ba902b7-01-later") is not None  # a later version
    for bad in (
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has four fields
        f"ff-{TRACE}-00f067aa0ba902b7-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",
        "",
    ):
        assert traceid.parse(bad) is None, bad
    new = traceid.new()
    assert re.fullmatch("[0-9a-f]{32}", new)
    assert new != traceid.new()
