"""Byte streams under the gRPC connections: TCP, Unix sockets, TLS with ALPN h2, mTLS."""

from __future__ import annotations

import contextlib
import os
import socket as _socket
import ssl
import stat
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

import trio

from prism.grpc.tls import TLSStream
from prism.grpc.wire.status import Unavailable

ALPN = "h2"


def server_ssl_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """TLS for a server, ALPN h2. With ``ca``, clients must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols([ALPN])
    if ca is not None:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """TLS for a client, ALPN h2. ``ca`` = trusted roots (system roots when None);
    ``cert``/``key`` = the client certificate for mTLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols([ALPN])
    return ctx


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is on the other end of a connection, as handlers see it."""

    address: str
    transport: str  # "tcp" | "unix"
    tls: bool = False
    certificate: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def identity(self) -> str | None:
        """The verified client certificate's subject CN, else its first SAN; None without one."""
        cert = self.certificate
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        for _kind, value in cert.get("subjectAltName", ()):
            return str(value)
        return None


def is_tls(stream: trio.abc.Stream) -> bool:
    """Whether ``stream`` is TLS (prism's :class:`~prism.grpc.tls.TLSStream` or Trio's)."""
    return isinstance(stream, (TLSStream, trio.SSLStream))


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    inner: Any = stream
    while is_tls(inner):
        inner = inner.transport_stream
    return getattr(inner, "socket", None)


def peer_info(stream: trio.abc.Stream) -> PeerInfo:
    sock = _socket_of(stream)
    tls = is_tls(stream)
    cert = stream.getpeercert() if tls else None  # type: ignore[attr-defined]
    if sock is not None and sock.family == _socket.AF_UNIX:
        return PeerInfo("unix:" + str(sock.getsockname() or ""), "unix", tls, cert or None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        host, port = "?", 0
    address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return PeerInfo(address, "tcp", tls, cert or None)


def check_alpn(stream: TLSStream | trio.SSLStream[Any]) -> None:
    proto = stream.selected_alpn_protocol()
    if proto not in (None, ALPN):
        raise Unavailable(f"TLS peer negotiated ALPN {proto!r}, not h2")


def set_nodelay(stream: trio.abc.Stream) -> None:
    sock = _socket_of(stream)
    if sock is not None and sock.family in (_socket.AF_INET, _socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)


async def open_unix_listener(
    path: str | os.PathLike[str], mode: int = 0o600
) -> trio.SocketListener:
    """A listening Unix socket at ``path`` with ``mode`` set before anyone can connect.

    A stale socket file is replaced; any other kind of file at ``path`` is an error.
    """
    p = os.fspath(path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(p).st_mode):
            raise FileExistsError(f"{p} exists and is not a socket")
        os.unlink(p)
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        await sock.bind(p)
        # chmod before listen(): until then nobody can connect, so there is no window.
        os.chmod(p, mode)
        sock.listen(_socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def connect(
    target: str, ssl_context: ssl.SSLContext | None, server_hostname: str | None
) -> trio.abc.Stream:
    """Open the byte stream for ``target`` (``host:port`` or ``unix:/path``).

    Cancellation aborts the connection attempt. Failures raise :class:`Unavailable`.
    """
    try:
        stream: trio.abc.Stream
        if target.startswith("unix:"):
            stream = await trio.open_unix_socket(target[len("unix:") :])
            host = server_hostname or "localhost"
        else:
            host, port = split_host_port(target)
            stream = await trio.open_tcp_stream(host, port)
            set_nodelay(stream)
        if ssl_context is not None:
            assert isinstance(stream, trio.SocketStream)
            tls = TLSStream(stream, ssl_context, server_hostname=server_hostname or host)
            try:
                await tls.do_handshake()
                check_alpn(tls)
            except BaseException:
                await trio.aclose_forcefully(tls)
                raise
            stream = tls
        return stream
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot connect to {target}: {describe_error(exc)}") from exc


# OpenSSL's X509_V_ERR_* codes for "this certificate's issuer is not one we trust".
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})
_NAME_MISMATCH_CODES = frozenset({62, 64})  # hostname, IP address


def describe_error(exc: BaseException) -> str:
    """What went wrong with a connection, in words: for a TLS failure (which trio reports as a
    BrokenResourceError with an empty message, the SSLError as its cause) the verification
    failure, ``certificate verify failed: unknown CA`` or ``... hostname mismatch``, or the
    peer's alert; else the exception's own message."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = seen.verify_message or seen.reason or str(seen)
            if seen.verify_code in _UNKNOWN_CA_CODES:
                return f"certificate verify failed: unknown CA ({detail})"
            if seen.verify_code in _NAME_MISMATCH_CODES:
                return f"certificate verify failed: hostname mismatch ({detail})"
            return f"certificate verify failed: {detail}"
        if isinstance(seen, ssl.SSLError):
            if seen.reason == "UNEXPECTED_EOF_WHILE_READING":
                # What a server sees of a client that refused its certificate without an alert.
                return "TLS: the peer closed the connection during the handshake"
            reason = (seen.reason or "").lower().replace("_", " ")
            return f"TLS: {reason or seen.strerror or seen}"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _unsent(
    out: list[bytes | bytearray | memoryview], sent: int
) -> list[bytes | bytearray | memoryview]:
    """What of ``out`` is left after the first ``sent`` bytes went out (views, no copies)."""
    for i, buf in enumerate(out):
        size = len(buf)
        if sent < size:
            rest = memoryview(buf)[sent:] if sent else buf
            return [rest, *out[i + 1 :]]
        sent -= size
    return []


def split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target {target!r} must be host:port or unix:/path")
    return host.strip("[]"), int(port)


class Input:
    """Reads a connection's bytes for its reader task.

    On a plain socket (no TLS) it reads the descriptor directly and, when the previous read
    left the socket empty (it returned less than asked for), waits for readability *before*
    reading. ``trio.SocketStream.receive_some`` always tries the read first: on a connection
    with one call at a time that read fails with ``EAGAIN`` after every request, and the
    failed system call plus Trio's exception handling for it sit between a request's arrival
    and its handler starting (~5 µs of CPU per wakeup here, docs/benchmarks.md). TLS streams
    use ``receive_some``.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._sock = stream.socket if type(stream) is trio.SocketStream else None
        self._drained = False
        self._delay = 0.0  # set by delay(): sleep this long before the next read

    async def receive(self, size: int) -> bytes | bytearray:
        """Up to ``size`` bytes; ``b""`` at end of stream. Always a checkpoint. Raises
        ``trio.ClosedResourceError`` once the stream was closed and ``BrokenResourceError``
        when the peer broke the connection."""
        sock = self._sock
        delay = self._delay
        if delay:
            self._delay = 0.0
            await trio.sleep(delay)
        if sock is None:
            return await self._stream.receive_some(size)
        if delay:
            pass  # tried first: an empty socket falls back to waiting below
        elif self._drained:
            await trio.lowlevel.wait_readable(sock)
        else:
            await trio.lowlevel.checkpoint()
        while True:
            fd = sock.fileno()  # -1 once closed: never read a reused descriptor
            if fd < 0:
                raise trio.ClosedResourceError("the connection was closed")
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection broken: {exc}") from exc
            self._drained = len(data) < size
            return data

    def read_first(self) -> None:
        """Have the next :meth:`receive` try the read before waiting for readability, even
        though the last read left the socket empty (data is expected by then)."""
        self._drained = False

    def delay(self, seconds: float) -> None:
        """Have the next :meth:`receive` sleep ``seconds`` and then read whatever arrived
        meanwhile (or wait for readability if nothing did): one read, one wake-up, for what
        a client writing message after message sends in that time."""
        self._delay = seconds


# Buffers per writev(2) call: well under IOV_MAX (1024 on Linux).
_MAX_IOV = 512
# A task sending messages (ServerCall/ClientCall.send_message) yields to the scheduler after
# this many bytes or messages without a wait; what it sent in between goes out in one write
# (Output.schedule). Bounded so that a flooding stream cannot starve the other tasks.
YIELD_BYTES = 64 << 10
YIELD_MESSAGES = 32


class Output:
    """Writes a connection's output, from whichever task produced it when nobody else is
    writing, else from the connection's writer task.

    One call at a time is a chain of task hand-offs: caller → writer task → socket → reader
    task → handler task → writer task → …, each hand-off a pass through Trio's scheduler
    (an ``epoll_wait`` and a cold run of the loop). On a plain socket or a
    :class:`~prism.grpc.tls.TLSStream`, output is written at once with a non-blocking
    ``writev`` by the task that produced it (on TLS, encrypted first: one record per 16 KiB,
    not one per buffer), provided no write is in progress or pending (bytes stay in order)
    and at most one call is open (``calls``: what the connection counts, e.g. the client's
    calls still waiting for their response headers). With more calls open the writer
    task batches their output into one write per scheduler pass, as before: writing each
    response at once measured one ``writev`` per RPC under h2load's load instead of one per
    ~16. What the socket does not take, and everything on other streams (``trio.SSLStream``),
    goes to the writer task.
    """

    def __init__(self, stream: trio.abc.Stream, conn: Any, calls: Sized) -> None:
        self._tls = stream if type(stream) is TLSStream else None
        direct = self._tls is not None or type(stream) is trio.SocketStream
        self._sock = stream.socket if direct else None  # type: ignore[attr-defined]
        self._conn = conn  # prism.grpc.wire.h2conn: wants_write(), output(), closed
        self._calls = calls
        self._need_write = trio.Event()
        self._writing = False
        # Bytes the socket did not take; on TLS, ciphertext (sent as it is).
        self._leftover: list[bytes | bytearray | memoryview] = []

    def kick(self) -> None:
        """Write what there is to write now, or wake the writer task for it (not for nothing:
        a wasted wakeup is a pass through the scheduler)."""
        conn = self._conn
        tls = self._tls
        if not conn.wants_write() and (tls is None or not tls.wants_write):
            return
        if (
            self._sock is not None
            and not conn.closed
            and not self._writing
            and len(self._calls) <= 1
            and not self._need_write.is_set()
        ):
            fd = self._sock.fileno()  # -1 once closed: never write to a reused descriptor
            if fd >= 0 and self._write_now(fd):
                return
        self._need_write.set()

    def schedule(self) -> None:
        """Have the writer task write what is queued on its next turn, rather than now: a
        task sending several messages in a row then has them go out in one write."""
        if not self._need_write.is_set():
            self._need_write.set()

    def _write_now(self, fd: int) -> bool:
        out = self._conn.output()
        if self._tls is not None:
            try:
                out = [self._tls.encrypt(out)]
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False  # the writer task raises it, and the connection ends
        elif len(out) > _MAX_IOV:
            self._leftover = out
            return False
        try:
            sent = os.writev(fd, out)
        except OSError:  # EAGAIN, EPIPE, …: the writer task retries and reports errors
            sent = 0
        rest = _unsent(out, sent)
        if rest:
            self._leftover = rest
            return False
        return True

    async def _writev_all(self, out: list[bytes | bytearray | memoryview]) -> None:
        """Write every buffer of ``out`` with ``writev`` (up to ``_MAX_IOV`` at a time), as
        they are: a large message's frames are views of it, sent without being joined.
        Waits while the socket is full; raises what ``send_all`` would (the peer broke the
        connection: ``BrokenResourceError``; it was closed: ``ClosedResourceError``)."""
        sock = self._sock
        assert sock is not None
        waited = False
        while out:
            fd = sock.fileno()  # -1 once closed: never write to a reused descriptor
            if fd < 0:
                raise trio.ClosedResourceError("the connection was closed")
            try:
                sent = os.writev(fd, out[:_MAX_IOV])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                waited = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"connection broken: {exc}") from exc
            out = _unsent(out, sent)
        if not waited:
            await trio.lowlevel.checkpoint()

    async def write_loop(self, send_all: Any, on_closed: Any) -> None:
        """The writer task: leftovers, back-pressure, TLS, and the connection's close
        (``on_closed`` runs once the final output is out)."""
        tls = self._tls
        if tls is not None:
            send_all = tls.send_raw  # we encrypt here: what goes out is ciphertext
        while True:
            await self._need_write.wait()
            self._need_write = trio.Event()
            self._writing = True
            try:
                out = self._conn.output()
                if tls is not None:
                    out = [tls.encrypt(out)]
                if self._leftover:
                    out = [*self._leftover, *out]
                    self._leftover = []
                if tls is None and self._sock is not None:
                    await self._writev_all(out)
                else:
                    for data in out:
                        await send_all(data)
            finally:
                self._writing = False
            # Closed while that write was in progress: the final GOAWAY came after the output
            # just written (need_write is set again); write it before closing.
            if self._conn.closed and not self._need_write.is_set():
                await on_closed()
                return
