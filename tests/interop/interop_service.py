"""The interop.Echo contract (peers/contract.md) served by prism, plus process helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from prism import grpc as pg

PEERS = Path(__file__).parent / "peers"
LIMIT = 32 << 20


class InteropEcho(pg.Service):
    name = "interop.Echo"

    def __init__(self) -> None:
        self.cancelled = 0
        self.remaining: float | None = None
        self.gathering = 0
        self.most = 0
        self.gathered = trio.Event()
        self.addresses: set[str] = set()

    @pg.unary_unary("Unary", bytes, bytes)
    async def unary(self, request: bytes, call: pg.ServerCall) -> bytes:
        echoed = [(k, v) for k, v in call.metadata if k.startswith("x-")]
        await call.send_initial_metadata(echoed)
        call.set_trailing_metadata([("trailing-" + k, v) for k, v in echoed])
        return request

    @pg.unary_stream("ServerStream", bytes, bytes)
    async def server_stream(self, request: bytes, call: pg.ServerCall) -> None:
        for i in range(int(request)):
            await call.send_message(b"%d" % i)

    @pg.stream_unary("ClientStream", bytes, bytes)
    async def client_stream(self, call: pg.ServerCall) -> bytes:
        return b"".join([m async for m in call])

    @pg.stream_stream("Bidi", bytes, bytes)
    async def bidi(self, call: pg.ServerCall) -> None:
        async for message in call:
            await call.send_message(message.upper())

    @pg.unary_unary("Fail", bytes, bytes)
    async def fail(self, request: bytes, call: pg.ServerCall) -> bytes:
        code, message = request.split(b"|", 1)
        raise pg.GrpcError(message.decode(), status=pg.Status(int(code)))

    @pg.unary_unary("Sleep", bytes, bytes)
    async def sleep(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.remaining = call.time_remaining
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return b""

    @pg.unary_stream("Ticks", bytes, bytes)
    async def ticks(self, request: bytes, call: pg.ServerCall) -> None:
        try:
            while True:
                await call.send_message(b"tick")
                await trio.sleep(0.01)
        except trio.Cancelled:
            self.cancelled += 1
            raise

    @pg.unary_unary("Gather", bytes, bytes)
    async def gather(self, request: bytes, call: pg.ServerCall) -> bytes:
        self.addresses.add(call.peer.address)
        self.gathering += 1
        self.most = max(self.most, self.gathering)
        if self.gathering >= int(request):
            self.gathered.set()
        with trio.move_on_after(5):
            await self.gathered.wait()
        most = self.most
        self.gathering -= 1
        if not self.gathering:
            self.gathered = trio.Event()
            self.most = 0
        return b"%d" % most

    @pg.unary_unary("Stats", bytes, bytes)
    async def stats(self, request: bytes, call: pg.ServerCall) -> bytes:
        return json.dumps({"cancelled": self.cancelled, "remaining": self.remaining}).encode()


@contextmanager
def peer_server(script: str, *args: str) -> Iterator[str]:
    """Run ``peers/<script>.py [args]`` in a subprocess; yields its ``127.0.0.1:port`` target."""
    proc = subprocess.Popen(
        [sys.executable, str(PEERS / f"{script}.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{script} did not start: {line!r}")
        yield f"127.0.0.1:{int(line.split()[1])}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
