"""transport.Input and Output: what a connection's reader task sees from a socket, and what
its writers put there."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest
import trio
import trio.lowlevel
import trio.testing
import trustme

from prism.grpc import transport
from prism.grpc.tls import TLSStream


def _pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_input_reads_what_arrives_in_order_then_end_of_stream() -> None:
    stream, peer = _pair()
    reader = transport.Input(stream)
    peer.sendall(b"hello")
    assert await reader.receive(1024) == b"hello"  # drained: the next read waits first
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, lambda: peer.sendall(b"world"))
        assert await reader.receive(1024) == b"world"
    peer.close()
    assert await reader.receive(1024) == b""
    await stream.aclose()


async def test_input_after_a_delay_takes_what_arrived_meanwhile_in_one_read() -> None:
    stream, peer = _pair()
    reader = transport.Input(stream)
    peer.sendall(b"a")
    assert await reader.receive(1024) == b"a"  # drained
    peer.sendall(b"b")

    async def send_later() -> None:
        await trio.lowlevel.checkpoint()  # runs while the reader sleeps
        peer.sendall(b"c")

    reader.delay(0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        # Without the delay the reader would find "b" ready and return it alone.
        assert await reader.receive(1024) == b"bc"
    peer.close()
    await stream.aclose()


@pytest.mark.parametrize("tls_like", [False, True])
async def test_input_after_a_delay_with_nothing_there_waits_for_data(tls_like: bool) -> None:
    stream, peer = _pair()
    # A stream that is not a plain trio.SocketStream reads through receive_some.
    source: trio.abc.Stream = trio.StapledStream(stream, stream) if tls_like else stream
    reader = transport.Input(source)
    peer.sendall(b"a")
    assert await reader.receive(1024) == b"a"
    reader.delay(0.001)

    async def send_later() -> None:
        await trio.sleep(0.05)  # after the delay is over: the reader must wait, not give up
        peer.sendall(b"z")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            assert await reader.receive(1024) == b"z"
        reader.delay(0.001)
        peer.close()
        assert await reader.receive(1024) == b""  # end of stream after a delay
    await stream.aclose()


async def test_input_returns_at_most_the_size_asked_and_keeps_the_rest() -> None:
    stream, peer = _pair()
    reader = transport.Input(stream)
    peer.sendall(b"abcdef")
    assert await reader.receive(4) == b"abcd"  # a full read: more may be waiting
    assert await reader.receive(4) == b"ef"
    peer.close()
    await stream.aclose()


async def test_input_is_a_checkpoint_even_when_data_is_waiting() -> None:
    stream, peer = _pair()
    reader = transport.Input(stream)
    peer.sendall(b"x" * 10)
    with trio.CancelScope() as scope:
        scope.cancel()
        await reader.receive(4)
    assert scope.cancelled_caught
    peer.close()
    await stream.aclose()


async def test_input_on_a_closed_stream_raises_closed_resource_error() -> None:
    stream, peer = _pair()
    reader = transport.Input(stream)
    peer.sendall(b"x")
    await reader.receive(1)  # a full read: the next one reads again without waiting
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await reader.receive(1)
    peer.close()


async def test_input_wakes_with_closed_resource_error_when_closed_while_waiting() -> None:
    stream, peer = _pair()
    reader = transport.Input(stream)
    peer.sendall(b"x")
    assert await reader.receive(16) == b"x"  # drained: the next read waits for data
    raised: list[BaseException] = []

    async def read() -> None:
        try:
            await reader.receive(16)
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
    assert len(raised) == 1
    peer.close()


async def test_input_reports_a_reset_connection_as_broken() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
    reader = transport.Input(stream)
    # SO_LINGER with a zero timeout: close() sends a TCP reset instead of a FIN.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        await reader.receive(16)
    await stream.aclose()


# -- transport.Output: what reaches the socket, and in which order ----------------------------


class _Queued:
    """The sans-IO side Output writes for (prism.grpc.wire.h2conn's output() interface)."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = []
        self.closed = False

    def wants_write(self) -> bool:
        return bool(self.buffers)

    def output(self) -> list[bytes]:
        out, self.buffers = self.buffers, []
        return out


def _tls_pair() -> tuple[TLSStream, trio.SSLStream[trio.SocketStream]]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ours, theirs = _pair()
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    return (
        TLSStream(ours, client_ctx, server_hostname="localhost"),
        trio.SSLStream(peer, server_ctx, server_side=True),
    )


@pytest.mark.parametrize("tls", [False, True])
async def test_output_keeps_bytes_in_order_whatever_the_socket_takes(tls: bool) -> None:
    # Direct writes from the producing task, leftovers the socket did not take, and what the
    # writer task sends meanwhile must reach the peer as one ordered byte stream.
    if tls:
        stream, peer = _tls_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.do_handshake)
            await stream.do_handshake()
        receiver: trio.abc.ReceiveStream = peer
    else:
        stream, raw = _pair()
        receiver = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
    for sock in (transport._socket_of(stream), transport._socket_of(receiver)):
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # small: partial writes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    queued = _Queued()
    output = transport.Output(stream, queued, calls=())
    chunks = [bytes([i % 251]) * (1 + i * 397 % 70_000) for i in range(200)]
    expected = b"".join(chunks)
    received = bytearray()

    async def read() -> None:
        while len(received) < len(expected):
            data = await receiver.receive_some(1 << 16)
            assert data
            received.extend(data)
            await trio.lowlevel.checkpoint()  # slow: the socket fills, writes are partial

    async def closed() -> None:
        pass

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.write_loop, stream.send_all, closed)
            nursery.start_soon(read)
            for i, chunk in enumerate(chunks):
                queued.buffers.append(chunk)
                if i % 5 == 0:
                    output.schedule()  # for the writer task's next turn
                else:
                    output.kick()  # now, from this task, if nobody else is writing
                if i % 4 == 0:
                    await trio.testing.wait_all_tasks_blocked()  # all written: kick writes
                else:
                    await trio.lowlevel.checkpoint()
            while len(received) < len(expected):
                output.kick()
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert bytes(received) == expected
    await trio.aclose_forcefully(stream)
    await trio.aclose_forcefully(receiver)
