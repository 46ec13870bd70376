"""Shared pieces for the Trio tests of prism.grpc: an echo service, a server fixture, and a
raw HTTP/2 client (plain h2 over a Trio socket) for the things a well-behaved client never does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import hyperframe.frame
import trio

from prism import grpc as pg


class Echo(pg.Service):
    """Raw-bytes echo in all four shapes."""

    name = "test.Echo"

    @pg.unary_unary("Unary", bytes, bytes)
    async def unary(self, request: bytes, call: pg.ServerCall) -> bytes:
        return request

    @pg.unary_stream("Server", bytes, bytes)
    async def server(self, request: bytes, call: pg.ServerCall) -> None:
        count = int(request or b"3")
        for i in range(count):
            await call.send_message(b"%d" % i)

    @pg.stream_unary("Client", bytes, bytes)
    async def client(self, call: pg.ServerCall) -> bytes:
        return b"".join([m async for m in call])

    @pg.stream_stream("Bidi", bytes, bytes)
    async def bidi(self, call: pg.ServerCall) -> None:
        async for message in call:
            await call.send_message(message.upper())


class Parked(pg.Service):
    """Handlers that send one message (or read nothing) and then wait until cancelled."""

    name = "test.Parked"

    def __init__(self) -> None:
        self.cancelled = trio.Event()

    @pg.unary_stream("One", bytes, bytes)
    async def one(self, request: bytes, call: pg.ServerCall) -> None:
        await call.send_message(b"first")
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()

    @pg.stream_unary("Deaf", bytes, bytes)
    async def deaf(self, call: pg.ServerCall) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


@asynccontextmanager
async def serving(
    *services: pg.Service,
    options: pg.ServerOptions | None = None,
    interceptors: Sequence[pg.ServerInterceptor] = (),
    **tcp: Any,
) -> AsyncIterator[tuple[pg.Server, str]]:
    """A server on 127.0.0.1 port 0 for the block; yields ``(server, "127.0.0.1:port")``."""
    server = pg.Server(services or [Echo()], options, interceptors=interceptors)
    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(_serve_tcp, server, tcp)
        yield server, f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def _serve_tcp(
    server: pg.Server,
    tcp: dict[str, Any],
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await server.serve_tcp("127.0.0.1", 0, task_status=task_status, **tcp)


def request_headers(
    method: str = "/test.Echo/Unary", *extra: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


def grpc_frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class _H2KeepsStreamsAfterGoAway(h2.connection.H2Connection):
    """Plain h2 moves to CLOSED on a GOAWAY and refuses every later frame, even for streams
    the GOAWAY lets finish. Real gRPC clients keep those streams going; so does this one."""

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class RawClient:
    """Plain h2 over a socket. It never acknowledges received DATA: flow control is manual."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = _H2KeepsStreamsAfterGoAway(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[h2.events.Event] = []
        self.closed = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, target: str) -> AsyncIterator[RawClient]:
        host, port = target.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        client = cls(stream)
        client.h2.initiate_connection()
        await client.flush()
        try:
            yield client
        finally:
            await trio.aclose_forcefully(stream)

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def receive(self) -> None:
        """Read once and feed h2 (which answers pings and settings by itself)."""
        data = await self.stream.receive_some(1 << 16)
        if not data:
            self.closed = True
            return
        self.events += self.h2.receive_data(data)
        await self.flush()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self.closed:
                raise AssertionError("connection closed before the expected event")
            await self.receive()

    def of(self, kind: type[Any], stream_id: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)
        ]

    def ended(self, stream_id: int) -> bool:
        return bool(
            self.of(h2.events.StreamEnded, stream_id) or self.of(h2.events.StreamReset, stream_id)
        )

    def trailers(self, stream_id: int) -> dict[bytes, bytes]:
        """Trailers, or the HEADERS of a trailers-only response."""
        found = self.of(h2.events.TrailersReceived, stream_id) or self.of(
            h2.events.ResponseReceived, stream_id
        )
        return dict(found[-1].headers)

    async def call(self, method: str, request: bytes | None, *extra: tuple[bytes, bytes]) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, request_headers(method, *extra), end_stream=request is None)
        if request is not None:
            self.h2.send_data(sid, grpc_frame(request), end_stream=True)
        await self.flush()
        return sid

    def set_window(self, size: int) -> None:
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Attacker:
    """A raw TCP peer that writes HTTP/2 frames by hand (hyperframe, hpack) and reads the
    server's frames back: for what no real client would send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.frames: list[hyperframe.frame.Frame] = []
        self.eof = False
        self._buffer = bytearray()

    @classmethod
    @asynccontextmanager
    async def connect(cls, target: str, *, greet: bool = True) -> AsyncIterator[Attacker]:
        """``greet``: send the client preface, an empty SETTINGS frame, and the ACK of the
        server's SETTINGS (the server sends them first thing)."""
        host, port = target.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        attacker = cls(stream)
        if greet:
            ack = hyperframe.frame.SettingsFrame(0, flags=["ACK"])
            await attacker.send(PREFACE, hyperframe.frame.SettingsFrame(0), ack)
        try:
            yield attacker
        finally:
            await trio.aclose_forcefully(stream)

    async def send(self, *parts: bytes | hyperframe.frame.Frame) -> None:
        """Everything in one write (so the server reads it in one go)."""
        data = b"".join(p if isinstance(p, bytes) else p.serialize() for p in parts)
        await self.stream.send_all(data)

    def headers(
        self, sid: int, path: str = "/test.Echo/Unary", *, end_stream: bool = False
    ) -> hyperframe.frame.HeadersFrame:
        block = self.encoder.encode(request_headers(path))
        flags = ["END_HEADERS", *(["END_STREAM"] if end_stream else [])]
        return hyperframe.frame.HeadersFrame(sid, block, flags=flags)

    def request(self, sid: int, path: str = "/test.Echo/Unary") -> list[hyperframe.frame.Frame]:
        """A whole unary request: HEADERS, then one message with END_STREAM."""
        body = hyperframe.frame.DataFrame(sid, grpc_frame(b"x"), flags=["END_STREAM"])
        return [self.headers(sid, path), body]

    @staticmethod
    def reset(sid: int) -> hyperframe.frame.RstStreamFrame:
        return hyperframe.frame.RstStreamFrame(sid, error_code=h2.errors.ErrorCodes.CANCEL)

    async def read_until(self, predicate: Callable[[hyperframe.frame.Frame], bool]) -> Any:
        """Read frames until one satisfies ``predicate`` (returned) or the server closes
        (None)."""
        for frame in self.frames:
            if predicate(frame):
                return frame
        while not self.eof:
            try:
                data = await self.stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                data = b""  # a reset after the server's close
            if not data:
                self.eof = True
                break
            self._buffer += data
            while len(self._buffer) >= 9:
                frame, length = hyperframe.frame.Frame.parse_frame_header(
                    memoryview(self._buffer[:9])
                )
                if len(self._buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(bytes(self._buffer[9 : 9 + length])))
                del self._buffer[: 9 + length]
                self.frames.append(frame)
                if predicate(frame):
                    return frame
        return None

    async def goaway(self) -> hyperframe.frame.GoAwayFrame:
        frame = await self.read_until(lambda f: isinstance(f, hyperframe.frame.GoAwayFrame))
        assert frame is not None, "the server closed without a GOAWAY"
        return frame

    async def closed(self) -> None:
        """Wait until the server closes the connection."""
        await self.read_until(lambda f: False)

    def of(self, kind: type[Any]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]
