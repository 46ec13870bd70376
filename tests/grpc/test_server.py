"""prism.grpc server behaviour over real sockets: prism clients and raw h2 clients."""

from __future__ import annotations

import logging
import math
import os
import ssl
import stat
from pathlib import Path

import h2.errors
import h2.events
import pytest
import trio
import trustme
from grpc_testkit import Echo, RawClient, grpc_frame, serving

from prism import grpc as pg
from prism.grpc.tls import TLSStream


class Behaviour(pg.Service):
    """Handlers that fail, overrun and report what they observed."""

    name = "test.Behaviour"

    def __init__(self) -> None:
        self.cancelled = trio.Event()
        self.started = trio.Event()
        self.release = trio.Event()
        self.finished = trio.Event()
        self.sent = 0
        self.peer: pg.PeerInfo | None = None

    @pg.unary_unary("Crash", bytes, bytes)
    async def crash(self, request: bytes, call: pg.ServerCall) -> bytes:
        raise RuntimeError("password=hunter2 leaked in a bug")

    @pg.unary_unary("Who", bytes, bytes)
    async def who(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.peer = call.peer
        return (call.peer.identity or "-").encode()

    @pg.unary_unary("Sleep", bytes, bytes)
    async def sleep(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return b""  # pragma: no cover

    @pg.unary_unary("Wait", bytes, bytes)
    async def wait(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.started.set()
        await self.release.wait()
        self.finished.set()
        return b"finished " + request

    @pg.unary_stream("Backlog", bytes, bytes)
    async def backlog(self, request: bytes, call: pg.ServerCall) -> None:
        """200 messages the client has no room for yet, then an error that must not wait."""
        for _ in range(200):
            await call.send_message(b"b" * 1280)
        self.sent = call.discard_unsent()
        raise pg.ResourceExhausted("cut off")

    @pg.unary_stream("Flood", bytes, bytes)
    async def flood(self, request: bytes, call: pg.ServerCall) -> None:
        chunk = b"f" * (1 << 20)
        self.started.set()
        try:
            while True:
                await call.send_message(chunk)
                self.sent += 1
        except trio.Cancelled:
            self.cancelled.set()
            raise


# -- errors -------------------------------------------------------------------------------------


async def test_server_handler_exception_is_unknown_and_connection_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="prism.grpc.server")
    async with serving(Behaviour(), Echo()) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.Unknown) as info:
            await channel.unary_unary("/test.Behaviour/Crash", b"", bytes)
        # A second call on the same channel (same connection) works.
        assert await channel.unary_unary("/test.Echo/Unary", b"still ok", bytes) == b"still ok"
    message = info.value.message
    assert "hunter2" not in message
    assert "RuntimeError" not in message
    assert "trace id" in message
    trace_id = message.rsplit("trace id ", 1)[1].rstrip(")")
    # The operator finds the traceback in the log under that trace id.
    [record] = [r for r in caplog.records if trace_id in r.getMessage()]
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


async def test_server_undecodable_request_is_invalid_argument() -> None:
    from prism._proto.grpc.health import v1 as health

    class Typed(pg.Service):
        name = "test.Typed"

        @pg.unary_unary("Check", health.HealthCheckRequest, health.HealthCheckResponse)
        async def check(
            self, request: health.HealthCheckRequest, call: pg.ServerCall
        ) -> health.HealthCheckResponse:
            return health.HealthCheckResponse()

    async with serving(Typed()) as (_, target), pg.open_channel(target) as channel:
        with pytest.raises(pg.InvalidArgument, match="HealthCheckRequest"):
            # field 1 (string) holding invalid UTF-8
            await channel.unary_unary("/test.Typed/Check", b"\n\x02\xff\xfe", bytes)


# -- deadlines and cancellation -----------------------------------------------------------------


async def test_server_returns_deadline_exceeded_when_handler_overruns() -> None:
    service = Behaviour()
    async with serving(service) as (_, target), RawClient.connect(target) as client:
        # A client that does not enforce its own deadline: the server must.
        sid = await client.call("/test.Behaviour/Sleep", b"", (b"grpc-timeout", b"200m"))
        with trio.fail_after(3):
            await client.until(lambda: client.ended(sid))
        trailers = client.trailers(sid)
        assert trailers[b"grpc-status"] == b"%d" % pg.Status.DEADLINE_EXCEEDED
        assert service.cancelled.is_set()


async def test_server_client_reset_cancels_the_handler() -> None:
    service = Behaviour()
    async with serving(service) as (_, target), RawClient.connect(target) as client:
        sid = await client.call("/test.Behaviour/Sleep", b"")
        with trio.fail_after(2):
            await service.started.wait()
        client.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        with trio.fail_after(2):
            await service.cancelled.wait()


# -- broken peers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00"
        + b"\xff" * 64,
        bytes(range(256)) * 4,
    ],
    ids=["http1", "bad-frame", "random"],
)
async def test_server_malformed_http2_closes_only_that_connection(garbage: bytes) -> None:
    async with serving() as (_, target), pg.open_channel(target) as channel:
        assert await channel.unary_unary("/test.Echo/Unary", b"before", bytes) == b"before"
        host, port = target.rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as raw:
            await raw.send_all(garbage)
            received = b""
            with trio.fail_after(3):
                # The server answers with SETTINGS and a GOAWAY ...
                while b"\x07\x00\x00\x00\x00\x00" not in received:  # GOAWAY frame header
                    chunk = await raw.receive_some(1 << 16)
                    assert chunk, "connection closed without a GOAWAY"
                    received += chunk
                # ... and closes the connection once we hang up.
                await raw.send_eof()
                while await raw.receive_some(1 << 16):
                    pass
        # The other client is unaffected.
        assert await channel.unary_unary("/test.Echo/Unary", b"after", bytes) == b"after"


async def test_server_peer_that_stops_reading_blocks_the_handler_not_memory() -> None:
    service = Behaviour()
    async with serving(service) as (server, target), RawClient.connect(target) as client:
        # The raw client reads frames but never sends WINDOW_UPDATE (65,535-byte windows).
        sid = await client.call("/test.Behaviour/Flood", b"")
        with trio.move_on_after(1.0):
            while True:
                await client.receive()
        received = sum(len(e.data) for e in client.of(h2.events.DataReceived, sid))
        assert received == 65535
        # The handler is parked in send_message: one message on the wire, one queued.
        assert service.sent <= 2
        [conn] = server._connections
        assert conn.conn.pending(sid) <= 2 * (1 << 20)
        # Opening the window lets it continue.
        client.h2.increment_flow_control_window(8 << 20)
        client.h2.increment_flow_control_window(8 << 20, stream_id=sid)
        await client.flush()
        with trio.fail_after(3):
            while service.sent < 5:
                await client.receive()
        client.h2.reset_stream(sid)
        await client.flush()
        with trio.fail_after(2):
            await service.cancelled.wait()


async def test_server_discard_unsent_lets_the_status_past_a_client_that_stops_reading() -> None:
    service = Behaviour()
    async with serving(service) as (_, target), RawClient.connect(target) as client:
        # The raw client never sends WINDOW_UPDATE: 51 of these 1,285-byte frames fill its
        # 65,535-byte window exactly, the other 149 wait in the server.
        sid = await client.call("/test.Behaviour/Backlog", b"")
        with trio.fail_after(10):  # catches a hang, not a speed
            await client.until(lambda: bool(client.of(h2.events.TrailersReceived, sid)))
        [trailers] = client.of(h2.events.TrailersReceived, sid)
        assert dict(trailers.headers)[b"grpc-status"] == b"%d" % pg.Status.RESOURCE_EXHAUSTED
        data = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
        assert data == grpc_frame(b"b" * 1280) * 51
        assert service.sent == 149 * 1285


# -- graceful shutdown --------------------------------------------------------------------------


async def test_server_shutdown_lets_in_flight_call_finish() -> None:
    service = Behaviour()
    async with serving(service) as (server, target), pg.open_channel(target) as channel:
        result: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                result.append(await channel.unary_unary("/test.Behaviour/Wait", b"x", bytes))

            nursery.start_soon(call)
            await service.started.wait()

            async def shutdown() -> None:
                await server.shutdown(grace=5)

            nursery.start_soon(shutdown)
            await trio.sleep(0.2)
            service.release.set()
            with trio.fail_after(2):
                await service.finished.wait()
        assert result == [b"finished x"]


async def test_server_shutdown_refuses_new_calls() -> None:
    service = Behaviour()
    async with (
        serving(service, Echo()) as (server, target),
        pg.open_channel(target) as channel,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(channel.unary_unary, "/test.Behaviour/Wait", b"", bytes)
        await service.started.wait()
        nursery.start_soon(server.shutdown, 5)
        await trio.sleep(0.2)
        # New calls, on the draining connection or a new one, are refused.
        with pytest.raises(pg.Unavailable):
            await channel.unary_unary("/test.Echo/Unary", b"", bytes)
        async with pg.open_channel(target) as other:
            with pytest.raises(pg.Unavailable):
                await other.unary_unary("/test.Echo/Unary", b"", bytes)
        service.release.set()


async def test_server_shutdown_refuses_streams_opened_after_goaway() -> None:
    service = Behaviour()
    async with serving(service, Echo()) as (server, target), RawClient.connect(target) as client:
        first = await client.call("/test.Behaviour/Wait", b"")
        await service.started.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown, 5)
            await client.until(lambda: bool(client.of(h2.events.ConnectionTerminated)))
            [goaway] = client.of(h2.events.ConnectionTerminated)
            assert goaway.last_stream_id == first
            assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
            # A stream the client opens after the GOAWAY is refused ...
            late = await client.call("/test.Echo/Unary", b"late")
            await client.until(lambda: bool(client.of(h2.events.StreamReset, late)))
            [reset] = client.of(h2.events.StreamReset, late)
            assert reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            # ... while the one in flight completes.
            service.release.set()
            await client.until(lambda: client.ended(first))
            assert client.trailers(first)[b"grpc-status"] == b"0"
            await client.stream.aclose()
    assert service.finished.is_set()


async def test_server_shutdown_cancels_calls_outliving_grace() -> None:
    service = Behaviour()
    async with serving(service) as (server, target), pg.open_channel(target) as channel:
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await channel.unary_unary("/test.Behaviour/Sleep", b"", bytes)
                except pg.GrpcError as exc:
                    outcome.append(exc)

            nursery.start_soon(call)
            await service.started.wait()
            start = trio.current_time()
            await server.shutdown(grace=0.3)
            elapsed = trio.current_time() - start
        assert 0.3 <= elapsed < 1.5
        assert service.cancelled.is_set()
        [error] = outcome
        assert isinstance(error, pg.Unavailable)
        assert error.message == "the server is shutting down"


async def test_server_shutdown_with_idle_connections_is_immediate() -> None:
    async with serving() as (server, target), pg.open_channel(target) as channel:
        await channel.unary_unary("/test.Echo/Unary", b"", bytes)
        with trio.fail_after(0.5):
            await server.shutdown(grace=10)


# -- keepalive ----------------------------------------------------------------------------------


async def test_server_answers_client_pings() -> None:
    async with serving() as (_, target), RawClient.connect(target) as client:
        client.h2.ping(b"pingpong")
        await client.flush()
        with trio.fail_after(2):
            await client.until(lambda: bool(client.of(h2.events.PingAckReceived)))
        assert client.of(h2.events.PingAckReceived)[0].ping_data == b"pingpong"


async def test_server_keepalive_keeps_answering_connections_open() -> None:
    options = pg.ServerOptions(keepalive_time=0.05, keepalive_timeout=0.2)
    async with (
        serving(Behaviour(), options=options) as (_, target),
        pg.open_channel(target) as channel,
    ):
        first = await channel.unary_unary("/test.Behaviour/Who", b"", bytes)
        before = (await channel.connection()).stream
        await trio.sleep(0.6)  # several keepalive rounds; prism's client answers the pings
        assert await channel.unary_unary("/test.Behaviour/Who", b"", bytes) == first
        assert (await channel.connection()).stream is before


async def test_server_keepalive_closes_connections_that_do_not_answer() -> None:
    options = pg.ServerOptions(keepalive_time=0.05, keepalive_timeout=0.2)
    async with serving(options=options) as (_, target), RawClient.connect(target) as client:
        # The raw client does not read, so it never acknowledges the server's pings.
        await trio.sleep(0.6)
        with trio.fail_after(2):
            while not client.closed:
                await client.receive()
        [goaway] = client.of(h2.events.ConnectionTerminated)
        assert goaway.additional_data == b"keepalive timeout"


# -- TLS, mTLS, Unix sockets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("plugin-a.example", common_name="plugin-a")
    other_ca = trustme.CA()
    stranger = other_ca.issue_cert("stranger.example", common_name="stranger")
    paths = {
        "ca": d / "ca.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server.key",
        "client_cert": d / "client.pem",
        "client_key": d / "client.key",
        "stranger_cert": d / "stranger.pem",
        "stranger_key": d / "stranger.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    stranger.private_key_pem.write_to_path(str(paths["stranger_key"]))
    stranger.cert_chain_pems[0].write_to_path(str(paths["stranger_cert"]))
    return paths


async def test_server_tls_negotiates_h2(pki: dict[str, Path]) -> None:
    service = Behaviour()
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"])
    client_ctx = pg.client_ssl_context(pki["ca"])
    async with (
        serving(service, ssl_context=server_ctx) as (_, target),
        pg.open_channel(target, ssl_context=client_ctx, server_hostname="localhost") as channel,
    ):
        assert await channel.unary_unary("/test.Behaviour/Who", b"", bytes) == b"-"
        conn = await channel.connection()
        assert isinstance(conn.stream, TLSStream)  # the client's own TLS (prism.grpc.tls)
        assert conn.stream.selected_alpn_protocol() == "h2"
    assert service.peer is not None
    assert service.peer.tls
    assert service.peer.certificate is None
    assert service.peer.identity is None


@pytest.mark.parametrize("frame_size", [1 << 14, 1 << 20])
async def test_server_tls_large_messages(pki: dict[str, Path], frame_size: int) -> None:
    # Large DATA payloads go out as views of the message (no copy) and come in as views of
    # the read buffer, merged across frames: the same bytes must come back, over TLS too.
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"])
    client_ctx = pg.client_ssl_context(pki["ca"])
    limit = 8 << 20
    options = pg.ServerOptions(max_receive_message_size=limit, max_frame_size=frame_size)
    channel_options = pg.ChannelOptions(max_receive_message_size=limit, max_frame_size=frame_size)
    payload = os.urandom(3 << 20) + b"end"
    async with (
        serving(Echo(), options=options, ssl_context=server_ctx) as (_, target),
        pg.open_channel(
            target, ssl_context=client_ctx, server_hostname="localhost", options=channel_options
        ) as channel,
    ):
        for _ in range(2):
            assert await channel.unary_unary("/test.Echo/Unary", payload, bytes) == payload
        parts = [payload[:100_000], payload[100_000:], b"", payload[:70_000]]
        joined = await channel.stream_unary("/test.Echo/Client", parts, bytes)
        assert joined == b"".join(parts)


async def test_server_mtls_exposes_client_identity(pki: dict[str, Path]) -> None:
    service = Behaviour()
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"], ca=pki["ca"])
    client_ctx = pg.client_ssl_context(pki["ca"], pki["client_cert"], pki["client_key"])
    async with (
        serving(service, ssl_context=server_ctx) as (_, target),
        pg.open_channel(target, ssl_context=client_ctx, server_hostname="localhost") as channel,
    ):
        assert await channel.unary_unary("/test.Behaviour/Who", b"", bytes) == b"plugin-a"
    assert service.peer is not None
    assert service.peer.identity == "plugin-a"
    assert service.peer.certificate is not None
    assert ("DNS", "plugin-a.example") in service.peer.certificate["subjectAltName"]


@pytest.mark.parametrize("client_cert", [None, "stranger"])
async def test_server_mtls_rejects_missing_or_untrusted_client_cert(
    pki: dict[str, Path], client_cert: str | None
) -> None:
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"], ca=pki["ca"])
    if client_cert is None:
        bad_ctx = pg.client_ssl_context(pki["ca"])
    else:
        bad_ctx = pg.client_ssl_context(
            pki["ca"], pki[f"{client_cert}_cert"], pki[f"{client_cert}_key"]
        )
    good_ctx = pg.client_ssl_context(pki["ca"], pki["client_cert"], pki["client_key"])
    async with serving(Behaviour(), ssl_context=server_ctx) as (_, target):
        async with pg.open_channel(target, ssl_context=bad_ctx, server_hostname="localhost") as bad:
            with pytest.raises(pg.Unavailable), trio.fail_after(5):
                await bad.unary_unary("/test.Behaviour/Who", b"", bytes)
        # The server keeps serving clients with a valid certificate.
        async with pg.open_channel(
            target, ssl_context=good_ctx, server_hostname="localhost"
        ) as good:
            assert await good.unary_unary("/test.Behaviour/Who", b"", bytes) == b"plugin-a"


async def test_server_tls_handshake_garbage_does_not_stop_the_server(pki: dict[str, Path]) -> None:
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"])
    client_ctx = pg.client_ssl_context(pki["ca"])
    async with serving(Behaviour(), ssl_context=server_ctx) as (_, target):
        host, port = target.rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as raw:
            await raw.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # cleartext to a TLS port
            with trio.fail_after(3):
                while await raw.receive_some(1024):
                    pass
        async with pg.open_channel(
            target, ssl_context=client_ctx, server_hostname="localhost"
        ) as channel:
            assert await channel.unary_unary("/test.Behaviour/Who", b"", bytes) == b"-"


async def test_server_plaintext_client_to_tls_server_is_unavailable(pki: dict[str, Path]) -> None:
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"])
    async with (
        serving(Behaviour(), ssl_context=server_ctx) as (_, target),
        pg.open_channel(target) as channel,
    ):
        with pytest.raises(pg.Unavailable), trio.fail_after(15):
            await channel.unary_unary("/test.Behaviour/Who", b"", bytes)


async def test_server_unix_socket_is_0600_and_serves(tmp_path: Path) -> None:
    service = Behaviour()
    server = pg.Server([service, Echo()])
    path = tmp_path / "plugin.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_unix, path)
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        async with pg.open_channel(f"unix:{path}") as channel:
            assert await channel.unary_unary("/test.Echo/Unary", b"hi", bytes) == b"hi"
            await channel.unary_unary("/test.Behaviour/Who", b"", bytes)
        await server.shutdown(grace=1)
    assert service.peer is not None
    assert service.peer.transport == "unix"
    assert not service.peer.tls
    assert not path.exists()  # removed when serving stopped


async def test_server_unix_socket_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    for _ in range(2):  # the second server finds the first one's leftover path
        server = pg.Server([Echo()])
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_unix, path)
            async with pg.open_channel(f"unix:{path}") as channel:
                assert await channel.unary_unary("/test.Echo/Unary", b"x", bytes) == b"x"
            nursery.cancel_scope.cancel()


async def test_server_unix_socket_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    server = pg.Server([Echo()])
    with pytest.raises(FileExistsError):
        await server.serve_unix(path)
    assert path.read_text() == "precious"


def test_server_ssl_context_requires_client_certs_with_ca(pki: dict[str, Path]) -> None:
    plain = pg.server_ssl_context(pki["server_cert"], pki["server_key"])
    mutual = pg.server_ssl_context(pki["server_cert"], pki["server_key"], ca=pki["ca"])
    assert plain.verify_mode == ssl.CERT_NONE
    assert mutual.verify_mode == ssl.CERT_REQUIRED


async def test_server_many_connections_at_once() -> None:
    async with serving() as (_, target):

        async def client(i: int) -> None:
            async with pg.open_channel(target) as channel:
                assert await channel.unary_unary("/test.Echo/Unary", b"%d" % i, bytes) == b"%d" % i

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(client, i)


async def test_server_raw_request_round_trip() -> None:
    # A minimal hand-driven gRPC exchange, to pin down the wire format the server produces.
    async with serving() as (_, target), RawClient.connect(target) as client:
        sid = await client.call("/test.Echo/Unary", b"raw")
        with trio.fail_after(2):
            await client.until(lambda: client.ended(sid))
        [response] = client.of(h2.events.ResponseReceived, sid)
        assert dict(response.headers)[b"content-type"] == b"application/grpc"
        data = b"".join(e.data for e in client.of(h2.events.DataReceived, sid))
        assert data == grpc_frame(b"raw")
        assert client.trailers(sid)[b"grpc-status"] == b"0"


class BadMetadata(pg.Service):
    name = "test.BadMetadata"

    @pg.unary_unary("Initial", bytes, bytes)
    async def initial(self, request: bytes, call: pg.ServerCall) -> bytes:
        await call.send_initial_metadata([("Not Valid", "x")])
        return request

    @pg.unary_unary("Trailing", bytes, bytes)
    async def trailing(self, request: bytes, call: pg.ServerCall) -> bytes:
        call.set_trailing_metadata([("x-ok", "caf\u00e9")])
        return request

    @pg.unary_unary("ErrorTrailers", bytes, bytes)
    async def error_trailers(self, request: bytes, call: pg.ServerCall) -> bytes:
        raise pg.NotFound("gone", trailers=[("grpc-status", "0")])


@pytest.mark.parametrize("method", ["Initial", "Trailing", "ErrorTrailers"])
async def test_server_invalid_handler_metadata_fails_only_that_call(method: str) -> None:
    async with (
        serving(BadMetadata(), Echo()) as (_, target),
        pg.open_channel(target) as channel,
    ):
        with pytest.raises(pg.GrpcError) as info:
            await channel.unary_unary(f"/test.BadMetadata/{method}", b"", bytes)
        assert info.value.status in (pg.Status.INTERNAL, pg.Status.UNKNOWN)
        assert await channel.unary_unary("/test.Echo/Unary", b"still", bytes) == b"still"


@pytest.mark.parametrize(
    "options",
    [{"max_frame_size": 1 << 24}, {"max_frame_size": 1000}, {"initial_window_size": 1 << 31}],
)
def test_server_options_reject_invalid_http2_settings(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        pg.Server([Echo()], pg.ServerOptions(**options))


@pytest.mark.parametrize("seconds", [-0.001, 0.5, math.nan])
def test_server_options_reject_a_client_stream_gather_out_of_range(seconds: float) -> None:
    with pytest.raises(ValueError, match="client_stream_gather"):
        pg.ServerOptions(client_stream_gather=seconds)


async def test_server_shutdown_drops_connections_still_in_tls_handshake(
    pki: dict[str, Path],
) -> None:
    server_ctx = pg.server_ssl_context(pki["server_cert"], pki["server_key"])
    async with serving(Behaviour(), ssl_context=server_ctx) as (server, target):
        host, port = target.rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as silent:
            await trio.sleep(0.05)  # accepted; its TLS handshake never starts
            with trio.fail_after(0.5):
                await server.shutdown(grace=10)
            assert await silent.receive_some(1024) == b""  # closed by the server
