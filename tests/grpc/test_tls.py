"""prism.grpc.tls.TLSStream against trio.SSLStream (OpenSSL through Trio's own code) as the peer,
on real socket pairs, both as client and as server."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from prism.grpc import transport
from prism.grpc.tls import RECORD_SIZE, TLSStream


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls-pki")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("client.example", common_name="client")
    paths = {name: d / f"{name}.pem" for name in ("ca", "stranger_ca", "server", "server_key")}
    paths |= {name: d / f"{name}.pem" for name in ("client", "client_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    stranger_ca.cert_pem.write_to_path(str(paths["stranger_ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return paths


def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        trio.SocketStream(trio.socket.from_stdlib_socket(b)),
    )


@asynccontextmanager
async def connected(
    pki: dict[str, Path], *, ours: str = "client", mutual: bool = False
) -> AsyncIterator[tuple[TLSStream, trio.SSLStream[trio.SocketStream]]]:
    """Our TLSStream on one end (as `ours`), trio.SSLStream on the other, handshaken."""
    server_ctx = transport.server_ssl_context(
        pki["server"], pki["server_key"], pki["ca"] if mutual else None
    )
    client_ctx = transport.client_ssl_context(
        pki["ca"], *((pki["client"], pki["client_key"]) if mutual else ())
    )
    a, b = _socket_pair()
    if ours == "client":
        mine = TLSStream(a, client_ctx, server_hostname="localhost")
        theirs = trio.SSLStream(b, server_ctx, server_side=True)
    else:
        mine = TLSStream(a, server_ctx, server_side=True)
        theirs = trio.SSLStream(b, client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs.do_handshake)
        await mine.do_handshake()
    try:
        yield mine, theirs
    finally:
        await trio.aclose_forcefully(mine)
        await trio.aclose_forcefully(theirs)


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = await stream.receive_some()
        assert chunk, f"end of stream after {got} of {size} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_tlsstream_carries_bytes_both_ways_and_agrees_on_h2(
    pki: dict[str, Path], ours: str
) -> None:
    async with connected(pki, ours=ours) as (mine, theirs):
        assert mine.selected_alpn_protocol() == "h2"
        assert mine.version() in ("TLSv1.2", "TLSv1.3")
        await mine.send_all(b"ping")
        assert await _receive_exactly(theirs, 4) == b"ping"
        await theirs.send_all(b"pong")
        assert await _receive_exactly(mine, 4) == b"pong"
        # Several records' worth, and what our writer sends: encrypted buffers, in order.
        payload = os.urandom(5 * RECORD_SIZE + 123)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs.send_all, payload)
            assert await _receive_exactly(mine, len(payload)) == payload
        buffers = [b"a" * 10, memoryview(b"b" * RECORD_SIZE), b"c" * 5] + [b"d"] * 3000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mine.send_raw, mine.encrypt(buffers))
            expected = b"".join(bytes(b) for b in buffers)
            assert await _receive_exactly(theirs, len(expected)) == expected


async def test_tlsstream_mutual_tls_shows_the_peer_certificate(pki: dict[str, Path]) -> None:
    async with connected(pki, ours="server", mutual=True) as (mine, _):
        assert transport.peer_info(mine).identity == "client"
        assert transport.peer_info(mine).tls


async def test_tlsstream_close_notify_is_end_of_stream(pki: dict[str, Path]) -> None:
    async with connected(pki) as (mine, theirs):
        await theirs.aclose()
        assert await mine.receive_some() == b""


async def test_tlsstream_our_close_sends_close_notify(pki: dict[str, Path]) -> None:
    async with connected(pki) as (mine, theirs):
        await mine.aclose()
        assert await theirs.receive_some() == b""  # clean: not a BrokenResourceError
        with pytest.raises(trio.ClosedResourceError):
            await mine.receive_some()


async def test_tlsstream_eof_without_close_notify_is_broken(pki: dict[str, Path]) -> None:
    async with connected(pki) as (mine, theirs):
        await theirs.transport_stream.aclose()  # TCP closes, TLS does not
        with pytest.raises(trio.BrokenResourceError):
            await mine.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            mine.encrypt([b"more"])


async def test_tlsstream_receive_is_a_checkpoint_even_with_data_waiting(
    pki: dict[str, Path],
) -> None:
    async with connected(pki) as (mine, theirs):
        await theirs.send_all(b"x" * 100)
        await trio.sleep(0.05)  # the bytes are in our socket
        with trio.CancelScope() as scope:
            scope.cancel()
            await mine.receive_some(10)
        assert scope.cancelled_caught
        assert await _receive_exactly(mine, 100) == b"x" * 100  # nothing was lost


async def test_tlsstream_two_receivers_at_once_is_busy(pki: dict[str, Path]) -> None:
    async with connected(pki) as (mine, theirs), trio.open_nursery() as nursery:
        nursery.start_soon(mine.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await mine.receive_some()
        await theirs.send_all(b"done")


async def test_tlsstream_waiting_receiver_wakes_when_the_stream_is_closed(
    pki: dict[str, Path],
) -> None:
    async with connected(pki) as (mine, _):
        raised: list[BaseException] = []

        async def receive() -> None:
            try:
                await mine.receive_some()
            except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                raised.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                await mine.aclose()
        assert raised


@pytest.mark.parametrize(
    ("trust", "hostname", "says"),
    [
        ("stranger_ca", "localhost", "certificate verify failed: unknown CA"),
        ("ca", "elsewhere.example", "certificate verify failed: hostname mismatch"),
    ],
)
async def test_tlsstream_handshake_failure_says_why(
    pki: dict[str, Path], trust: str, hostname: str, says: str
) -> None:
    a, b = _socket_pair()
    server = trio.SSLStream(
        b, transport.server_ssl_context(pki["server"], pki["server_key"]), server_side=True
    )
    mine = TLSStream(a, transport.client_ssl_context(pki[trust]), server_hostname=hostname)

    async def serve() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(trio.BrokenResourceError) as info:
            await mine.do_handshake()
    assert says in transport.describe_error(info.value)
    await trio.aclose_forcefully(mine)
    await trio.aclose_forcefully(server)


async def test_tlsstream_peer_gone_during_handshake_is_broken(pki: dict[str, Path]) -> None:
    a, b = _socket_pair()
    mine = TLSStream(a, transport.client_ssl_context(pki["ca"]), server_hostname="localhost")

    async def hang_up() -> None:  # after the ClientHello, as a server refusing us would
        await b.receive_some()
        await b.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up)
        with pytest.raises(trio.BrokenResourceError) as info:
            await mine.do_handshake()
    says = transport.describe_error(info.value)
    assert says == "TLS: the peer closed the connection during the handshake"
    await trio.aclose_forcefully(mine)


async def test_tlsstream_refuses_a_peer_that_speaks_plaintext(pki: dict[str, Path]) -> None:
    a, b = _socket_pair()
    mine = TLSStream(a, transport.client_ssl_context(pki["ca"]), server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.send_all, b"HTTP/1.1 400 Bad Request\r\n\r\n" * 10)
        with pytest.raises(trio.BrokenResourceError) as info:
            await mine.do_handshake()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    await trio.aclose_forcefully(mine)
    await b.aclose()
