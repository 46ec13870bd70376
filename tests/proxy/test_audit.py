"""The audit log over a real front door: one JSON record per call (allowed, refused by
authorization, refused before the namespace was read, unknown namespace), to a 0600 file or to
the ``prism.audit`` logger; admin actions through ``record_admin``. Every record and log line
is searched for the token, the metadata value and the payload the calls carried."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from authz_testkit import ns, proxy, who
from host_testkit import Running

from prism import grpc as pg
from prism._proto.prism.data.v1 import SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config.audit import AuditConfig
from prism.grpc.interceptor import CallOutcome
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import NotFound, PermissionDenied, Status
from prism.proxy.audit import MAX_QUEUE, WAKE_AT, AuditLog
from prism.proxy.request import Identity, RequestInfo
from prism.sdk.typed import pack

TOKEN = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"
SECRET_VALUE = b"s3cr3t-payload-bytes"
METADATA_VALUE = "tenant-metadata-value-42"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"


async def set_secret(running: Running, namespace: str, metadata: list[tuple[str, str]]) -> None:
    request = ExecuteRequest(
        namespace=namespace,
        operation="set",
        typed_params=pack(SetRequest(key="k", value=SECRET_VALUE)),
        metadata={"x-tenant": METADATA_VALUE},
    )
    await running.channel.unary_unary(EXECUTE, request, ExecuteResponse, metadata=metadata)


def credentials(subject: str | None) -> list[tuple[str, str]]:
    pairs = [("authorization", f"Bearer {TOKEN}"), ("x-tenant", METADATA_VALUE)]
    return pairs + (who(subject) if subject else [])


async def four_calls(running: Running) -> None:
    await set_secret(running, "kv", credentials("alice"))  # allowed
    with pytest.raises(PermissionDenied):
        await set_secret(running, "kv", credentials(None))  # anonymous: refused
    with pytest.raises(NotFound):
        await set_secret(running, "nowhere", credentials("alice"))
    with pytest.raises(pg.GrpcError):  # the stream of a later call: traced by the client
        await running.channel.unary_unary(
            EXECUTE, b"\xff\xff", ExecuteResponse, metadata=[("traceparent", TRACEPARENT)]
        )


def assert_no_secrets(text: str) -> None:
    for secret in (TOKEN, METADATA_VALUE, SECRET_VALUE.decode(), "Bearer", "x-tenant"):
        assert secret not in text


def check_records(records: list[dict[str, Any]]) -> None:
    assert [(r["namespace"], r["operation"], r["status"]) for r in records] == [
        ("kv", "set", "OK"),
        ("kv", "set", "PERMISSION_DENIED"),
        ("nowhere", "set", "NOT_FOUND"),
        ("", "", "INVALID_ARGUMENT"),
    ]
    allowed, refused, unknown, _ = records
    assert (allowed["subject"], allowed["source"]) == ("alice", "jwt")
    assert (refused["subject"], refused["source"]) == ("anonymous", "anonymous")
    assert unknown["subject"] == "alice"
    for record in records:
        assert set(record) == {
            "time",
            "kind",
            "namespace",
            "operation",
            "stream",
            "subject",
            "source",
            "status",
            "latency_ms",
            "trace_id",
            "peer",
        }
        assert record["kind"] == "call"
        assert record["stream"] is False
        assert record["time"].endswith("Z")
        assert record["latency_ms"] >= 0
        assert record["peer"].startswith("127.0.0.1:")
        # The tracing stage (on by default) started a W3C trace for each call.
        assert re.fullmatch(r"[0-9a-f]{32}", record["trace_id"])
        assert record["trace_id"] != "0" * 32
    # One trace per call (none of these calls sent a traceparent).
    assert len({r["trace_id"] for r in records}) == len(records)


async def test_audit_file_has_one_record_per_call_and_no_secrets(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditConfig(enabled=True, file=path)
    async with proxy(ns("kv"), audit=audit) as running:
        await four_calls(running)
    # Stopping the proxy flushed the buffer and closed the file.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert_no_secrets(text)
    check_records([json.loads(line) for line in text.splitlines()])


async def test_audit_logger_gets_the_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything any logger says, to search it for secrets
    async with proxy(ns("kv"), audit=AuditConfig(enabled=True)) as running:
        await four_calls(running)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "prism.audit"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "prism.audit")
    check_records(records)
    assert_no_secrets("\n".join(r.getMessage() for r in caplog.records))


async def test_audit_disabled_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prism.audit")
    async with proxy(ns("kv", anonymous=True), audit=AuditConfig()) as running:
        await set_secret(running, "kv", [])
    assert [r for r in caplog.records if r.name == "prism.audit"] == []


async def test_audit_file_is_flushed_by_the_writer_task(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": "record"}\n')
    path.chmod(0o640)
    audit = AuditLog(path, flush_interval=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        audit.record_admin("reload", "kv", Identity("ops", "mtls"), Status.OK)
        assert path.read_text().count("\n") == 1  # buffered: no write on the request path
        await trio.sleep(0.6)  # past one flush interval (the clock jumps)
        assert path.read_text().count("\n") == 2
        nursery.cancel_scope.cancel()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "record"}  # appended to, not replaced
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # an existing file keeps its mode
    record = json.loads(lines[1])
    del record["time"]
    assert record == {
        "kind": "admin",
        "action": "reload",
        "target": "kv",
        "subject": "ops",
        "source": "mtls",
        "status": "OK",
    }


def test_audit_record_admin_by_name_and_cut_names(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prism.audit")
    audit = AuditLog()
    audit.record_admin("config.reload", "", "admin-token-holder", "FAILED_PRECONDITION")
    audit.record_admin("disable", "x" * 500, None, Status.PERMISSION_DENIED)
    first, second = (json.loads(r.getMessage()) for r in caplog.records)
    assert (first["subject"], first["source"], first["status"]) == (
        "admin-token-holder",
        None,
        "FAILED_PRECONDITION",
    )
    assert second["target"] == "x" * 200 + "…"
    assert (second["subject"], second["status"]) == (None, "PERMISSION_DENIED")


def call_info(namespace: str, subject: str | None) -> tuple[RequestInfo, CallOutcome]:
    info = RequestInfo(PeerInfo('127.0.0.1:5"0', "tcp"), 0.0)
    info.namespace, info.operation = namespace, "get"
    if subject is not None:
        info.identity = Identity(subject, "jwt")
    return info, CallOutcome(Status.NOT_FOUND, "no such key", 0.0004567)


def test_audit_file_record_is_json_whatever_the_names(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    odd = 'k"v\\\nü\u2028\x00'
    audit.record(*call_info(odd, subject='"}, "admin": true'))
    audit.record(*call_info("kv", subject=None))
    audit.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("time"))
    assert first == {
        "kind": "call",
        "namespace": odd,
        "operation": "get",
        "stream": False,
        "subject": '"}, "admin": true',
        "source": "jwt",
        "status": "NOT_FOUND",
        "latency_ms": 0.457,
        "trace_id": None,
        "peer": '127.0.0.1:5"0',
    }
    assert (second["subject"], second["source"], second["namespace"]) == (None, None, "kv")


def test_audit_file_queue_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)  # no writer task: nothing drains the queue
    info, outcome = call_info("kv", "alice")
    for _ in range(MAX_QUEUE + 5):
        audit.record(info, outcome)
    audit.record_admin("reload", "kv", "ops", Status.OK)
    assert audit.dropped == 6
    audit.close()
    assert path.read_text().count("\n") == MAX_QUEUE
    audit.record(info, outcome)  # after close: dropped, not raised
    assert audit.dropped == 7


async def test_audit_file_writer_wakes_for_a_long_queue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, flush_interval=3600)
    info, outcome = call_info("kv", "alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        for _ in range(WAKE_AT - 1):
            audit.record(info, outcome)
        await trio.testing.wait_all_tasks_blocked()
        assert path.read_text() == ""  # waiting for the interval
        audit.record(info, outcome)
        await trio.testing.wait_all_tasks_blocked()
        assert path.read_text().count("\n") == WAKE_AT  # written without waiting an hour
        assert trio.current_time() < 3600
        nursery.cancel_scope.cancel()
