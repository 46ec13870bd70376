"""``Server.serve_connection``: connections accepted by a listener of the application's own,
which read the client's first bytes before handing them over (a port that serves gRPC and
another protocol side by side). Real sockets; prism's channel and grpcio as clients."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import grpc
import pytest
import trio
import trustme
from grpc_testkit import Echo

from prism import grpc as pg

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Who(pg.Service):
    name = "test.Who"

    @pg.unary_unary("Am", bytes, bytes)
    async def am(self, request: bytes, call: pg.ServerCall) -> bytes:
        return (call.peer.identity or "-").encode()


@asynccontextmanager
async def handing_over(
    server: pg.Server, *, read: int, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """A TCP listener that does the TLS handshake itself (with ``ssl_context``), reads the
    first ``read`` bytes and hands the connection to ``server``; yields its target."""

    async def handle(stream: trio.SocketStream) -> None:
        conn: trio.abc.Stream = stream
        if ssl_context is not None:
            conn = trio.SSLStream(stream, ssl_context, server_side=True)
            await conn.do_handshake()
        received = b""
        while len(received) < read:
            chunk = await conn.receive_some(read - len(received))
            if not chunk:
                return
            received += chunk
        await server.serve_connection(conn, received=received)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("read", [1, len(PREFACE), len(PREFACE) + 9])
async def test_server_serve_connection_processes_the_bytes_already_read(read: int) -> None:
    # Part of the preface, all of it, and the preface plus the SETTINGS frame's header.
    server = pg.Server([Echo()])
    async with handing_over(server, read=read) as target, pg.open_channel(target) as channel:
        for payload in (b"one", b"two"):
            assert await channel.unary_unary("/test.Echo/Unary", payload, bytes) == payload
        replies = [m async for m in channel.stream_stream("/test.Echo/Bidi", [b"a", b"b"], bytes)]
        assert replies == [b"A", b"B"]
        assert server.open_connections == 1


async def test_server_serve_connection_serves_grpcio() -> None:
    server = pg.Server([Echo()])
    async with handing_over(server, read=len(PREFACE)) as target:

        def call() -> bytes:
            with grpc.insecure_channel(target) as channel:
                unary = channel.unary_unary("/test.Echo/Unary")
                result: bytes = unary(b"from grpcio", timeout=10)
                return result

        assert await trio.to_thread.run_sync(call) == b"from grpcio"


async def test_server_serve_connection_over_tls_keeps_the_client_identity(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    client_cert = ca.issue_cert("billing.example", common_name="billing")
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    server_ctx = pg.server_ssl_context(
        tmp_path / "server.pem", tmp_path / "server.key", ca=tmp_path / "ca.pem"
    )
    client_ctx = pg.client_ssl_context(
        tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    )
    server = pg.Server([Who()])
    async with (
        handing_over(server, read=len(PREFACE), ssl_context=server_ctx) as target,
        pg.open_channel(target, ssl_context=client_ctx, server_hostname="localhost") as channel,
    ):
        assert await channel.unary_unary("/test.Who/Am", b"", bytes) == b"billing"


async def test_server_serve_connection_honours_max_concurrent_connections() -> None:
    server = pg.Server([Echo()], pg.ServerOptions(max_concurrent_connections=1))
    async with (
        handing_over(server, read=1) as target,
        pg.open_channel(target) as first,
        pg.open_channel(target) as second,
    ):
        assert await first.unary_unary("/test.Echo/Unary", b"x", bytes) == b"x"
        with trio.fail_after(10), pytest.raises(pg.Unavailable):
            await second.unary_unary("/test.Echo/Unary", b"y", bytes)
        assert server.counters.connections_rejected == 1
        assert await first.unary_unary("/test.Echo/Unary", b"z", bytes) == b"z"


class Slow(pg.Service):
    name = "test.Slow"

    def __init__(self) -> None:
        self.started = trio.Event()

    @pg.unary_unary("Call", bytes, bytes)
    async def call(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.started.set()
        await trio.sleep(0.2)
        return b"done"


async def test_server_serve_connection_is_drained_by_shutdown() -> None:
    slow = Slow()
    server = pg.Server([slow])
    async with handing_over(server, read=1) as target, pg.open_channel(target) as channel:
        async with trio.open_nursery() as nursery:
            results: list[bytes] = []

            async def call() -> None:
                results.append(await channel.unary_unary("/test.Slow/Call", b"", bytes))

            nursery.start_soon(call)
            with trio.fail_after(10):
                await slow.started.wait()
                await server.shutdown(grace=10)
        assert results == [b"done"]
        assert server.open_connections == 0
