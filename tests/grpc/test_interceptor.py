"""Server interceptors over real connections: order, rejection, per-call state, outcomes."""

from __future__ import annotations

import logging
from pathlib import Path

import h2.errors
import pytest
import trio
import trustme
from grpc_testkit import Echo, RawClient, serving

from prism import grpc as pg

IDENTITY: pg.CallKey[str] = pg.CallKey("identity")


class Recorder(pg.ServerInterceptor):
    """Notes every hook it runs in a shared log, and each outcome."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.outcomes: list[tuple[str, pg.CallOutcome]] = []

    async def before(self, call: pg.ServerCall) -> None:
        self.log.append(f"{self.name}.before {call.method}")

    def after(self, call: pg.ServerCall, outcome: pg.CallOutcome) -> None:
        self.log.append(f"{self.name}.after {outcome.status.name}")
        self.outcomes.append((call.method, outcome))


class TokenAuth(pg.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer good``; attaches the caller's name."""

    async def before(self, call: pg.ServerCall) -> None:
        if call.metadata_value("authorization") != "Bearer good":
            raise pg.Unauthenticated("a valid token is required")
        call.state[IDENTITY] = "alice"


class Behaviour(pg.Service):
    name = "test.Intercepted"

    def __init__(self, log: list[str] | None = None) -> None:
        self.log = log if log is not None else []
        self.ran = 0

    @pg.unary_unary("Whoami", bytes, bytes)
    async def whoami(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.ran += 1
        self.log.append("handler")
        who = call.state.get(IDENTITY, "nobody")
        peer = call.peer.identity or "-"
        return f"{who}/{peer}".encode()

    @pg.unary_unary("Crash", bytes, bytes)
    async def crash(self, request: bytes, call: pg.ServerCall) -> bytes:
        raise RuntimeError("handler bug")

    @pg.unary_unary("Sleep", bytes, bytes)
    async def sleep(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.ran += 1
        await trio.sleep_forever()
        return b""  # pragma: no cover


async def test_interceptors_run_in_order_around_the_handler() -> None:
    log: list[str] = []
    first, second = Recorder("a", log), Recorder("b", log)
    async with (
        serving(Behaviour(log), interceptors=[first, second]) as (_, target),
        pg.open_channel(target) as channel,
    ):
        assert await channel.unary_unary("/test.Intercepted/Whoami", b"", bytes) == b"nobody/-"
    assert log == [
        "a.before /test.Intercepted/Whoami",
        "b.before /test.Intercepted/Whoami",
        "handler",
        "b.after OK",
        "a.after OK",
    ]
    [(method, outcome)] = first.outcomes
    assert method == "/test.Intercepted/Whoami"
    assert outcome.status is pg.Status.OK
    assert outcome.duration >= 0
    assert outcome.exception is None


async def test_interceptor_rejects_before_the_handler_and_sees_the_status() -> None:
    log: list[str] = []
    service = Behaviour(log)
    recorder = Recorder("audit", log)
    async with (
        serving(service, interceptors=[recorder, TokenAuth()]) as (_, target),
        pg.open_channel(target) as channel,
    ):
        with pytest.raises(pg.Unauthenticated, match="valid token"):
            await channel.unary_unary("/test.Intercepted/Whoami", b"", bytes)
        good = [("authorization", "Bearer good")]
        reply = await channel.unary_unary("/test.Intercepted/Whoami", b"", bytes, metadata=good)
        assert reply == b"alice/-"  # the identity the interceptor attached, in the handler
    assert service.ran == 1
    [(_, rejected), (_, accepted)] = recorder.outcomes
    assert rejected.status is pg.Status.UNAUTHENTICATED
    assert isinstance(rejected.exception, pg.Unauthenticated)
    assert accepted.status is pg.Status.OK


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("svc.example", common_name="billing")
    paths = {name: d / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["ccert"]))
    client.private_key_pem.write_to_path(str(paths["ckey"]))
    return paths


class CertificateIdentity(pg.ServerInterceptor):
    """Admits only callers with a verified client certificate; their identity is the CN."""

    async def before(self, call: pg.ServerCall) -> None:
        if call.peer.identity is None:
            raise pg.PermissionDenied("a client certificate is required")
        call.state[IDENTITY] = f"cert:{call.peer.identity}"


async def test_interceptor_sees_the_tls_client_certificate_identity(pki: dict[str, Path]) -> None:
    server_ctx = pg.server_ssl_context(pki["cert"], pki["key"], ca=pki["ca"])
    client_ctx = pg.client_ssl_context(pki["ca"], pki["ccert"], pki["ckey"])
    async with (
        serving(Behaviour(), interceptors=[CertificateIdentity()], ssl_context=server_ctx) as (
            _,
            target,
        ),
        pg.open_channel(target, ssl_context=client_ctx, server_hostname="localhost") as channel,
    ):
        reply = await channel.unary_unary("/test.Intercepted/Whoami", b"", bytes)
    assert reply == b"cert:billing/billing"


async def test_interceptor_after_sees_handler_errors_deadlines_and_resets() -> None:
    recorder = Recorder("m", [])
    service = Behaviour()
    async with serving(service, interceptors=[recorder]) as (_, target):
        async with pg.open_channel(target) as channel:
            with pytest.raises(pg.Unknown):
                await channel.unary_unary("/test.Intercepted/Crash", b"", bytes)
        async with RawClient.connect(target) as client:
            # A deadline the server enforces, then a client reset.
            sid = await client.call("/test.Intercepted/Sleep", b"", (b"grpc-timeout", b"100m"))
            with trio.fail_after(30):
                await client.until(lambda: client.ended(sid))
            sid = await client.call("/test.Intercepted/Sleep", b"")
            with trio.fail_after(30):
                while service.ran < 2:  # noqa: ASYNC110 (the handler runs in the server)
                    await trio.sleep(0.01)
            client.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            await client.flush()
            with trio.fail_after(30):
                while len(recorder.outcomes) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    crash, deadline, reset = (outcome for _, outcome in recorder.outcomes)
    assert crash.status is pg.Status.UNKNOWN
    assert isinstance(crash.exception, RuntimeError)
    assert deadline.status is pg.Status.DEADLINE_EXCEEDED
    assert deadline.duration >= 0.1
    assert reset.status is pg.Status.CANCELLED


class BuggyBefore(pg.ServerInterceptor):
    async def before(self, call: pg.ServerCall) -> None:
        raise KeyError("interceptor bug")


class BuggyAfter(pg.ServerInterceptor):
    def after(self, call: pg.ServerCall, outcome: pg.CallOutcome) -> None:
        raise ZeroDivisionError("after bug")


async def test_interceptor_bug_is_unknown_and_the_connection_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="prism.grpc.server")
    service = Behaviour()
    async with (
        serving(service, interceptors=[BuggyBefore()]) as (_, target),
        pg.open_channel(target) as channel,
    ):
        for _ in range(2):  # twice on one connection: it survived the first
            with pytest.raises(pg.Unknown, match="trace id"):
                await channel.unary_unary("/test.Intercepted/Whoami", b"", bytes)
    assert service.ran == 0
    assert any(r.exc_info and isinstance(r.exc_info[1], KeyError) for r in caplog.records)


async def test_interceptor_bug_after_the_call_is_logged_and_the_call_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="prism.grpc.server")
    async with (
        serving(Behaviour(), interceptors=[BuggyAfter()]) as (_, target),
        pg.open_channel(target) as channel,
    ):
        for _ in range(2):
            assert await channel.unary_unary("/test.Intercepted/Whoami", b"", bytes) == b"nobody/-"
    [first, _second] = [r for r in caplog.records if "interceptor" in r.getMessage()]
    assert "trace id" in first.getMessage()
    assert first.exc_info is not None
    assert isinstance(first.exc_info[1], ZeroDivisionError)


async def test_interceptors_do_not_see_unknown_methods() -> None:
    recorder = Recorder("m", [])
    async with (
        serving(Echo(), interceptors=[recorder]) as (_, target),
        pg.open_channel(target) as channel,
    ):
        with pytest.raises(pg.Unimplemented):
            await channel.unary_unary("/test.Nothing/Here", b"", bytes)
    assert recorder.outcomes == []


def test_call_state_is_typed_by_key() -> None:
    state = pg.CallState()
    other: pg.CallKey[str] = pg.CallKey("identity")  # same name, another key
    state[IDENTITY] = "alice"
    assert state[IDENTITY] == "alice"
    assert IDENTITY in state
    assert other not in state
    assert state.get(other) is None
    assert state.get(other, "nobody") == "nobody"
    with pytest.raises(KeyError):
        state[other]
