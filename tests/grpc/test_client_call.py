"""Client call objects over real sockets: leaving a call from another task (against a prism
server), and malformed responses and the ``grpc-timeout`` sent (with a server written with h2
directly)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import trio
from grpc_testkit import Parked, serving

from prism import grpc as pg
from prism.grpc.health import HealthCheckResponse, ServingStatus


async def test_client_call_close_from_another_task_wakes_a_waiting_receiver() -> None:
    service = Parked()
    async with serving(service) as (_, target), pg.open_channel(target) as channel:
        received: list[bytes | None] = []
        async with channel.stream("/test.Parked/One", bytes) as call:
            await call.send_message(b"")
            await call.end()
            assert await call.receive_message() == b"first"

            async def receive() -> None:
                received.append(await call.receive_message())

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    await trio.testing.wait_all_tasks_blocked()
                    call.close()
                await service.cancelled.wait()
        assert received == [None]
        assert call.status is pg.Status.CANCELLED
        # The channel is still usable.
        async for message in channel.unary_stream("/test.Parked/One", b"", bytes):
            assert message == b"first"
            break


async def test_client_call_close_from_another_task_wakes_a_sender_held_by_flow_control() -> None:
    # The handler never reads: the sender fills the server's window and waits for it.
    service = Parked()
    options = pg.ServerOptions(initial_window_size=65535)
    async with serving(service, options=options) as (_, target), pg.open_channel(target) as ch:
        sent = 0
        async with ch.stream("/test.Parked/Deaf", bytes) as call:

            async def send() -> None:
                nonlocal sent
                while True:
                    await call.send_message(b"x" * 16384)
                    sent += 1
                    if call.status is not None:
                        return

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    await trio.testing.wait_all_tasks_blocked()
                    assert call.status is None  # the sender is parked, not finished
                    call.close()
                await service.cancelled.wait()
        assert sent > 0
        assert call.status is pg.Status.CANCELLED


# -- malformed responses ------------------------------------------------------------------------

Respond = Callable[[h2.connection.H2Connection, int], None]
GRPC_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS = [(b"grpc-status", b"0")]


class Hostile:
    """A server that answers every request with what ``respond`` writes (plain h2, no gRPC
    library), on 127.0.0.1; counts the connections it accepted and keeps the request headers."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[list[tuple[bytes, bytes]]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        try:
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests.append(list(event.headers or []))  # type: ignore[arg-type]
                        self.respond(conn, event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length or 0, event.stream_id
                        )
                await stream.send_all(conn.data_to_send())
        except (trio.BrokenResourceError, h2.exceptions.ProtocolError):
            return


@asynccontextmanager
async def hostile(respond: Respond) -> AsyncIterator[tuple[Hostile, str]]:
    server = Hostile(respond)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, server.handle, 0)
        port = listeners[0].socket.getsockname()[1]
        yield server, f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def answer(
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> Respond:
    """A response: ``headers``; ``body`` as one DATA frame (END_STREAM when no trailers);
    ``trailers``. Empty headers with trailers: a trailers-only response."""

    def respond(conn: h2.connection.H2Connection, sid: int) -> None:
        if not headers:
            conn.send_headers(sid, trailers or [], end_stream=True)
            return
        conn.send_headers(sid, headers, end_stream=not body and trailers is None)
        if body:
            conn.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            conn.send_headers(sid, trailers, end_stream=True)

    return respond


def framed(payload: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(payload).to_bytes(4, "big") + payload


MALFORMED = {
    "bad protobuf": (
        answer(GRPC_HEADERS, framed(b"\x08\xff\xff"), OK_TRAILERS),
        r"could not decode the response.*HealthCheckResponse",
    ),
    "unknown message flag": (
        answer(GRPC_HEADERS, framed(b"\x08\x01", flag=2), OK_TRAILERS),
        r"invalid message flag 2",
    ),
    "compressed flag without grpc-encoding": (
        answer(GRPC_HEADERS, framed(b"\x08\x01", flag=1), OK_TRAILERS),
        r"compressed flag set",
    ),
    "length prefix longer than the message": (
        answer(GRPC_HEADERS, framed(b"\x08\x01")[:-1], OK_TRAILERS),
        r"ended in the middle of a message",
    ),
    "length prefix cut short": (
        answer(GRPC_HEADERS, b"\x00\x00\x00", OK_TRAILERS),
        r"ended in the middle of a message",
    ),
    "trailers without grpc-status": (
        answer(GRPC_HEADERS, framed(b"\x08\x01"), [(b"x-other", b"1")]),
        r"no valid grpc-status",
    ),
    "non-numeric grpc-status": (
        answer(GRPC_HEADERS, framed(b"\x08\x01"), [(b"grpc-status", b"OK")]),
        r"no valid grpc-status",
    ),
    "no trailers at all": (
        answer(GRPC_HEADERS, framed(b"\x08\x01")),
        r"ended without a grpc-status",
    ),
    "headers only, no grpc-status": (
        answer(GRPC_HEADERS),
        r"ended without a grpc-status",
    ),
    "wrong content-type": (
        answer([(b":status", b"200"), (b"content-type", b"text/html")], b"<html>", OK_TRAILERS),
        r"content-type 'text/html'",
    ),
    "no content-type": (
        answer([(b":status", b"200")], framed(b"\x08\x01"), OK_TRAILERS),
        r"content-type ''",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_client_call_malformed_response_is_internal(case: str) -> None:
    respond, message = MALFORMED[case]
    async with hostile(respond) as (server, target), pg.open_channel(target) as channel:
        with trio.fail_after(30):
            for _ in range(2):  # the second call: the connection survived the first
                call = channel.unary_unary("/test.Any/Get", b"", HealthCheckResponse)
                with pytest.raises(pg.Internal, match=message):
                    await call
                assert call.status is pg.Status.INTERNAL
        assert server.connections == 1


async def test_client_call_malformed_message_in_a_stream_is_internal() -> None:
    # Two good responses, then one protobuf refuses: the loop yields two, then raises.
    good = framed(bytes(HealthCheckResponse(status=ServingStatus.SERVING)))
    respond = answer(GRPC_HEADERS, good + good + framed(b"\x0a\x05ab"), OK_TRAILERS)
    async with hostile(respond) as (server, target), pg.open_channel(target) as channel:
        for _ in range(2):  # the second call: the connection survived the first
            got: list[HealthCheckResponse] = []

            async def iterate(got: list[HealthCheckResponse] = got) -> None:
                async for reply in channel.unary_stream("/test.Any/List", b"", HealthCheckResponse):
                    got.append(reply)

            with trio.fail_after(30), pytest.raises(pg.Internal, match="could not decode"):
                await iterate()
            assert len(got) == 2
        assert server.connections == 1


# -- the grpc-timeout a call sends ------------------------------------------------------------


@pytest.mark.parametrize(
    ("outer", "shield", "seconds", "sent"),
    [
        (None, False, 0.25, b"250000u"),  # the call's own timeout
        (None, False, 30, b"30000000u"),
        (0.125, False, 30, b"125000u"),  # an enclosing scope's nearer deadline
        (30, False, 0.25, b"250000u"),  # the timeout nearer than the enclosing scope
        (2.5, False, None, b"2500000u"),  # no timeout: the enclosing deadline
        (None, False, None, None),  # no deadline at all: no header
        (0.125, True, None, None),  # a shield hides the deadlines outside it
        (0.125, True, 0.25, b"250000u"),
    ],
)
async def test_client_call_sends_the_nearest_deadline_as_grpc_timeout(
    mock_clock: trio.testing.MockClock,  # frozen: the header's value is exact
    outer: float | None,
    shield: bool,
    seconds: float | None,  # the call's timeout=
    sent: bytes | None,
) -> None:
    ok = answer(GRPC_HEADERS, framed(b"pong"), OK_TRAILERS)
    async with hostile(ok) as (server, target), pg.open_channel(target) as channel:
        with trio.move_on_after(math.inf if outer is None else outer):
            with trio.CancelScope(shield=shield):
                reply = await channel.unary_unary("/t.S/M", b"", bytes, timeout=seconds)
    assert reply == b"pong"
    [headers] = server.requests
    assert dict(headers).get(b"grpc-timeout") == sent
