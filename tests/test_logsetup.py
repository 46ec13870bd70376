"""Log lines as an operator reads them (``prism.logsetup``): JSON objects or text, with the
context's namespace, plugin and trace id; and a sidecar's JSON lines as the proxy reads them."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest
import trio

from prism import logsetup
from prism.logsetup import LOG_CONTEXT, Fields, TraceparentFields, parse_plugin_line

log = logging.getLogger("prism.test.logsetup")


@pytest.fixture
def installed() -> Iterator[list[logging.Handler]]:
    """Handlers installed by the test, removed after it (the root level restored too)."""
    handlers: list[logging.Handler] = []
    root = logging.getLogger()
    level = root.level
    yield handlers
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_configure_json_writes_one_object_per_record_with_the_context(
    installed: list[logging.Handler],
) -> None:
    out = io.StringIO()
    installed.append(logsetup.configure("json", "info", out))
    token = LOG_CONTEXT.set(Fields({"namespace": "kv", "plugin": "memstore", "trace_id": ""}))
    try:
        log.info("hello %s", "there", extra={"peer": "127.0.0.1:5"})
        log.debug("below the level")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        LOG_CONTEXT.reset(token)
    log.warning("outside")
    first, failed, outside = (json.loads(line) for line in lines(out))
    assert first["message"] == "hello there"
    assert (first["level"], first["logger"]) == ("INFO", "prism.test.logsetup")
    assert (first["namespace"], first["plugin"], first["peer"]) == ("kv", "memstore", "127.0.0.1:5")
    assert "trace_id" not in first  # empty fields are left out
    assert first["time"].endswith("Z")
    assert "ValueError: boom" in failed["exception"]
    assert "namespace" not in outside


def test_configure_text_shows_the_context_after_the_message(
    installed: list[logging.Handler],
) -> None:
    out = io.StringIO()
    installed.append(logsetup.configure("text", "info", out))
    token = LOG_CONTEXT.set(Fields({"namespace": "kv", "trace_id": "ab" * 16}))
    try:
        log.info("hello")
    finally:
        LOG_CONTEXT.reset(token)
    (line,) = lines(out)
    assert line.endswith(f"INFO prism.test.logsetup: hello [namespace=kv trace_id={'ab' * 16}]")


def test_configure_auto_is_json_off_a_terminal_and_text_on_one(
    installed: list[logging.Handler],
) -> None:
    pipe = io.StringIO()
    installed.append(logsetup.configure("auto", "info", pipe))
    log.info("to a pipe")
    assert json.loads(pipe.getvalue())["message"] == "to a pipe"

    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as tty, os.fdopen(controller, "rb", buffering=0) as screen:
        installed.append(logsetup.configure("auto", "info", tty))  # replaces the first
        log.info("to a terminal")
        tty.flush()
        shown = screen.read(4096).decode()
    assert shown.rstrip().endswith("INFO prism.test.logsetup: to a terminal")
    assert pipe.getvalue().count("\n") == 1  # the first handler is gone


async def test_log_context_holds_for_a_task_and_its_children_only(
    installed: list[logging.Handler],
) -> None:
    out = io.StringIO()
    installed.append(logsetup.configure("json", "info", out))

    async def call(namespace: str) -> None:
        LOG_CONTEXT.set(Fields({"namespace": namespace}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, log.info, "child")  # a thread too
        await trio.lowlevel.checkpoint()
        log.info("call")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a")
        nursery.start_soon(call, "b")
    log.info("parent")
    records = [json.loads(line) for line in lines(out)]
    assert sorted((r["message"], r.get("namespace")) for r in records) == [
        ("call", "a"),
        ("call", "b"),
        ("child", "a"),
        ("child", "b"),
        ("parent", None),
    ]


def test_traceparent_fields_name_the_trace_and_the_span() -> None:
    fields = TraceparentFields(f"00-{'ab' * 16}-{'cd' * 8}-01").log_fields()
    assert fields == {"trace_id": "ab" * 16, "span_id": "cd" * 8}
    assert TraceparentFields("not-one").log_fields() == {}


def test_parse_plugin_line_reads_a_json_record() -> None:
    formatter = logsetup.JsonFormatter()
    record = logging.LogRecord("backend", logging.ERROR, "x.py", 1, "lost %s", ("db",), None)
    record.trace_id = "ab" * 16
    parsed = parse_plugin_line(formatter.format(record))
    assert parsed is not None
    assert (parsed.level, parsed.logger, parsed.message) == (logging.ERROR, "backend", "lost db")
    assert parsed.fields == {"trace_id": "ab" * 16}


@pytest.mark.parametrize(
    "line",
    ["plain text", "{not json", '["a list"]', '{"no": "message"}', '{"message": 5}', "{}"],
)
def test_parse_plugin_line_leaves_other_lines_alone(line: str) -> None:
    assert parse_plugin_line(line) is None


def test_parse_plugin_line_takes_nothing_the_proxy_decides() -> None:
    line = json.dumps(
        {
            "message": "m",
            "level": "LOUD",
            "namespace": "someone-else",
            "plugin": "forged",
            "trace_id": "x" * 100,
            "extra": "dropped",
        }
    )
    parsed = parse_plugin_line(line)
    assert parsed is not None
    assert parsed.level is None  # an unknown level: the stream's own is used
    assert parsed.fields == {"trace_id": "x" * 32}  # bounded; namespace and plugin not taken
