"""A pool of memcached connections on Trio sockets (the meta protocol is in ``meta``).

Errors carry their gRPC status: the server unreachable or a connection lost → UNAVAILABLE; no
answer within the command timeout → DEADLINE_EXCEEDED (and the connection is closed: its
replies would be out of step); error replies are mapped by ``reply_error``.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from dataclasses import dataclass

import trio

from prism.sdk import (
    DeadlineExceeded,
    GrpcError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    slots,
)
from prism_plugin_memcached.meta import ProtocolError, Reader, Reply

__all__ = ["Connection", "ConnectionLost", "Endpoint", "Pool", "reply_error"]

READ_SIZE = 65536


class ConnectionLost(Exception):
    def __init__(self, replied: bool) -> None:
        super().__init__("connection lost")
        self.replied = replied


def reply_error(reply: Reply, what: str) -> GrpcError:
    text = reply.line.decode(errors="replace")
    if reply.code == b"SERVER_ERROR":
        if "too large" in text:
            return InvalidArgument(f"memcached: {text} ({what}; see the server's -I)")
        if "out of memory" in text:
            return ResourceExhausted(f"memcached: {text} ({what})")
        return Unavailable(f"memcached: {text} ({what})")
    return Internal(f"memcached: {text} ({what})")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    connect_timeout: float = 5.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = Reader()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()

    def alive(self) -> bool:
        """False when the server closed this idle connection (peeked without blocking)."""
        if self.closed:
            return False
        try:
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # b"" is EOF; anything else is out of step

    async def roundtrip(self, data: bytes, count: int) -> list[Reply]:
        """Send ``data`` (``count`` commands) in one write; their replies, in order."""
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            except OSError:
                raise ConnectionLost(replied=False) from None
            view = view[sent:]
        replies: list[Reply] = []
        replied = False
        while True:
            try:
                reply = self._reader.gets()
                while reply is not None:
                    replies.append(reply)
                    if len(replies) == count:
                        return replies
                    reply = self._reader.gets()
            except ProtocolError as exc:
                self.close()
                raise Internal(f"memcached sent a malformed reply: {exc}") from None
            await trio.lowlevel.wait_readable(self._sock)
            try:
                chunk = self._sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                raise ConnectionLost(replied) from None
            if not chunk:
                raise ConnectionLost(replied)
            replied = True
            self._reader.feed(chunk)


async def connect(endpoint: Endpoint) -> Connection:
    """A connected socket, or Unavailable. Cancellation closes it."""
    try:
        with trio.fail_after(endpoint.connect_timeout):
            infos = await trio.socket.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_STREAM
            )
            reason = "no address"
            for family, kind, proto, _, address in infos:
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    code = sock.connect_ex(address)
                    if code == errno.EINPROGRESS:
                        await trio.lowlevel.wait_writable(sock)
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(code, errno.errorcode.get(code, str(code)))
                    return Connection(sock)
                except OSError as exc:
                    sock.close()
                    reason = exc.strerror or str(exc)
                except BaseException:
                    sock.close()
                    raise
    except trio.TooSlowError:
        reason = f"no connection within {endpoint.connect_timeout:g} s"
    except OSError as exc:  # name resolution
        reason = exc.strerror or type(exc).__name__
    raise Unavailable(f"memcached at {endpoint.address} cannot be reached: {reason}")


class Pool:
    """``size`` connections lent to one caller at a time (``fill`` opens them all); a
    connection the server closed is replaced on its next use, one whose command failed midway
    is closed."""

    def __init__(self, endpoint: Endpoint, size: int, command_timeout: float) -> None:
        self.endpoint = endpoint
        self.size = size
        self.command_timeout = command_timeout
        self._idle: deque[Connection] = deque()
        self._slots = trio.Semaphore(size)
        self.open_connections = 0

    async def _open(self) -> Connection:
        connection = await connect(self.endpoint)
        self.open_connections += 1
        return connection

    def _discard(self, connection: Connection) -> None:
        if not connection.closed:
            connection.close()
            self.open_connections -= 1

    async def fill(self) -> None:
        while len(self._idle) < self.size:
            self._idle.append(await self._open())

    def close(self) -> None:
        while self._idle:
            self._discard(self._idle.popleft())

    async def _acquire(self) -> tuple[Connection, bool]:
        await slots.take(self._slots)
        try:
            while self._idle:
                connection = self._idle.popleft()
                if connection.alive():
                    return connection, True
                self._discard(connection)
            return await self._open(), False
        except BaseException:
            self._slots.release()
            raise

    def _release(self, connection: Connection, reusable: bool) -> None:
        if reusable and not connection.closed:
            self._idle.append(connection)
        else:
            self._discard(connection)
        self._slots.release()

    async def execute(self, data: bytes, count: int, what: str) -> list[Reply]:
        """``count`` commands in ``data`` as one pipeline; their replies. A reused connection
        found closed before any reply (the server dropped it while idle) is replaced and the
        pipeline sent once more: the server never read it. Cancellation closes the
        connection."""
        for attempt in range(2):
            connection, reused = await self._acquire()
            reusable = False
            try:
                with trio.move_on_after(self.command_timeout) as scope:
                    replies = await connection.roundtrip(data, count)
                    reusable = True
                if scope.cancelled_caught:
                    raise DeadlineExceeded(
                        f"memcached did not answer {what} within {self.command_timeout:g} s"
                    )
                return replies
            except ConnectionLost as lost:
                if reused and not lost.replied and attempt == 0:
                    continue
                raise Unavailable(
                    f"memcached at {self.endpoint.address}: the connection was lost during {what}"
                ) from None
            finally:
                self._release(connection, reusable)
        raise AssertionError("unreachable")
