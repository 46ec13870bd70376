"""The admin port's HTTP/1.1 server over real sockets: raw requests (keep-alive, pipelining,
malformed and oversized ones, slow clients) and httpx, a client nobody here wrote."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import httpx
import pytest
import trio

from prism.proxy.http import HttpError, HttpLimits, HttpServer, Request, Response, Routes

LIMITS = HttpLimits(
    max_head=2048, max_body=1024, request_timeout=0.5, keepalive_timeout=0.5, send_timeout=5
)


@dataclass
class Served:
    server: HttpServer
    port: int
    entered: trio.Event
    release: trio.Event

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def routes(entered: trio.Event, release: trio.Event) -> Routes:
    table = Routes()

    async def hello(request: Request) -> Response:
        return Response.text(f"hello {request.query or 'world'}\n")

    async def echo(request: Request) -> Response:
        return Response.json({"got": request.json(), "type": request.header("content-type")})

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug with a secret: hunter2")

    async def teapot(request: Request) -> Response:
        raise HttpError(418, "no coffee here")

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.text("done\n")

    table.add("GET", "/hello", hello)
    table.add("POST", "/echo", echo)
    table.add("GET", "/broken", broken)
    table.add("GET", "/teapot", teapot)
    table.add("GET", "/slow", slow)
    return table


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    entered, release = trio.Event(), trio.Event()
    server = HttpServer(routes(entered, release), LIMITS)

    async def handle(stream: trio.SocketStream) -> None:
        await server.serve_connection(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield Served(server, listeners[0].socket.getsockname()[1], entered, release)
        nursery.cancel_scope.cancel()


async def connect(served: Served) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", served.port)


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response (status line + headers, body by content-length) from ``buffer`` + stream."""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(4096)
            assert data, f"connection closed; got {bytes(buffer)!r}"
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += await stream.receive_some(4096)
        del buffer[:]
        buffer += rest[length:]
        return head, rest[:length]


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            data += chunk
    return data


async def test_http_keeps_the_connection_alive_between_requests(served: Served) -> None:
    stream = await connect(served)
    buffer = bytearray()
    for name in (b"a", b"b"):
        await stream.send_all(b"GET /hello?" + name + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        head, body = await read_response(stream, buffer)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-type: text/plain; charset=utf-8" in head
        assert body == b"hello " + name + b"\n"
    await stream.aclose()


async def test_http_answers_pipelined_requests_in_order(served: Served) -> None:
    stream = await connect(served)
    await stream.send_all(
        b"GET /hello?1 HTTP/1.1\r\nhost: x\r\n\r\nGET /hello?2 HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    buffer = bytearray()
    assert (await read_response(stream, buffer))[1] == b"hello 1\n"
    assert (await read_response(stream, buffer))[1] == b"hello 2\n"
    await stream.aclose()


async def test_http_serves_the_bytes_a_listener_already_read() -> None:
    server = HttpServer(routes(trio.Event(), trio.Event()), LIMITS)

    async def handle(stream: trio.SocketStream) -> None:
        received = b""
        while len(received) < 8:  # what a sniffing listener would have read
            received += await stream.receive_some(8 - len(received))
        await server.serve_connection(stream, received=received)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/hello?again")
        assert reply.text == "hello again\n"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 without host
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS
    ],
)
async def test_http_bad_request_is_400_and_the_server_keeps_serving(
    served: Served, garbage: bytes
) -> None:
    stream = await connect(served)
    await stream.send_all(garbage)
    answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in answer.lower()
    async with httpx.AsyncClient() as client:
        assert (await client.get(served.url + "/hello")).text == "hello world\n"


async def test_http_body_over_the_limit_is_413(served: Served) -> None:
    stream = await connect(served)
    await stream.send_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n" + b"x" * 100
    )
    assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 413 ")
    chunked = await connect(served)  # no length given up front: counted as it arrives
    chunk = b"400\r\n" + b"y" * 0x400 + b"\r\n"
    await chunked.send_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + chunk * 2
    )
    assert (await read_until_closed(chunked)).startswith(b"HTTP/1.1 413 ")


async def test_http_head_over_the_limit_is_431(served: Served) -> None:
    stream = await connect(served)
    await stream.send_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nx-big: " + b"z" * 4000 + b"\r\n\r\n")
    assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 431 ")
    piecemeal = await connect(served)  # still arriving: h11's own bound
    await piecemeal.send_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nx-big: " + b"z" * 1500)
    await trio.sleep(0.05)
    await piecemeal.send_all(b"z" * 1500)
    assert (await read_until_closed(piecemeal)).startswith(b"HTTP/1.1 431 ")


async def test_http_slow_request_is_408_and_closed(served: Served) -> None:
    # Slowloris: a head that never ends. The request timeout closes it; others are served.
    stream = await connect(served)
    await stream.send_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n")
    for _ in range(3):
        await trio.sleep(0.1)
        await stream.send_all(b"x-more: 1\r\n")
    answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    async with httpx.AsyncClient() as client:
        assert (await client.get(served.url + "/hello")).status_code == 200


async def test_http_idle_connection_is_closed_after_keepalive_timeout(served: Served) -> None:
    stream = await connect(served)
    await stream.send_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
    buffer = bytearray()
    await read_response(stream, buffer)
    assert await read_until_closed(stream) == b""  # closed without a word
    assert served.server.open_connections == 0


async def test_http_routes_unknown_path_404_other_method_405(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        missing = await client.get("/nope")
        assert (missing.status_code, missing.json()) == (404, {"error": "no such path: /nope"})
        wrong = await client.delete("/hello")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, HEAD"


async def test_http_head_is_the_get_without_its_body(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        head = await client.head("/hello")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len("hello world\n"))
        assert head.content == b""


async def test_http_json_request_and_response_with_httpx(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        reply = await client.post("/echo", json={"namespace": "kv"})
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"got": {"namespace": "kv"}, "type": "application/json"}
        bad = await client.post("/echo", content=b"{not json", headers={"content-type": "x"})
        assert (bad.status_code, bad.json()) == (
            400,
            {"error": "the request body is not valid JSON"},
        )


async def test_http_expect_100_continue_gets_100_then_the_answer(served: Served) -> None:
    stream = await connect(served)
    await stream.send_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
    )
    with trio.fail_after(10):
        interim = await stream.receive_some(4096)
    assert interim.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"true")
    _, body = await read_response(stream, bytearray(interim.partition(b"\r\n\r\n")[2]))
    assert body == b'{"got":true,"type":null}\n'


async def test_http_handler_bug_is_500_with_a_trace_id_never_its_message(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        reply = await client.get("/broken")
        assert reply.status_code == 500
        assert reply.json()["error"].startswith("internal error (trace id ")
        assert "hunter2" not in reply.text
        assert (await client.get("/teapot")).json() == {"error": "no coffee here"}
        assert (await client.get("/hello")).status_code == 200  # same connection, still serving
    trace_id = reply.json()["error"].rsplit(" ", 1)[1].rstrip(")")
    assert len(trace_id) == 32
    assert any(trace_id in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_http_handler_bug_is_reported_under_the_traceparents_trace_id(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    async with httpx.AsyncClient(base_url=served.url) as client:
        reply = await client.get("/broken", headers=headers)
    assert reply.json() == {"error": f"internal error (trace id {trace_id})"}
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"trace id {trace_id}" in record.getMessage()
    assert record.__dict__["trace_id"] == trace_id


async def test_http_shutdown_closes_idle_connections_and_finishes_requests(
    served: Served,
) -> None:
    idle = await connect(served)
    busy = await connect(served)
    await idle.send_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
    await read_response(idle, bytearray())
    await busy.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
    with trio.fail_after(10):
        await served.entered.wait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.server.shutdown, 10)
        assert await read_until_closed(idle) == b""  # closed at once, nothing in progress
        served.release.set()
        answer = await read_until_closed(busy)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b"done\n")
    assert served.server.open_connections == 0
