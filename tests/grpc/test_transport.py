"""transport.Input: what a connection's reader task sees from a socket."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from prism.grpc import transport


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
