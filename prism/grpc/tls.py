"""TLS for prism's connections: a ``trio.abc.Stream`` over a socket, with the record layer in
``ssl.SSLObject`` (OpenSSL, through memory BIOs) and the socket I/O done here.

Why not ``trio.SSLStream``: with one call at a time on a connection (a proxy calling its remote
plugin), every byte that crosses it went through several extra passes of Trio's scheduler:
each ``send_all`` was handed to the connection's writer task and ended in a schedule point,
every read first tried ``recv`` on an empty socket (``EAGAIN``) and every buffer of a response
became a TLS record of its own, written by its own ``send``. Measured on the plugins bench
(``python -m bench plugins``, docs/benchmarks.md): the proxy's side of a remote call made 7-8
passes through the run loop where the same call to a sidecar makes 4. Here the connection's
tasks use synchronous fast paths (:mod:`prism.grpc.transport`'s ``Input`` and ``Output``):
:meth:`TLSStream.encrypt` turns what a connection has queued into ciphertext (small buffers
coalesced into records of up to 16 KiB) that the producing task writes with one ``writev``,
and :meth:`TLSStream.receive_some` waits for the socket only when nothing is left to decrypt.

Semantics follow ``trio.SSLStream`` where prism relies on them: failures raise
``trio.BrokenResourceError`` with the ``ssl.SSLError`` as its cause (so
:func:`prism.grpc.transport.describe_error` can say why), the peer's ``close_notify`` reads as
end of stream and an EOF without one as ``BrokenResourceError``, and concurrent sends or
receives raise ``trio.BusyResourceError``. TLS renegotiation is refused (HTTP/2 forbids it,
RFC 9113 §9.2.1); TLS 1.3 post-handshake messages (session tickets, key updates) work, and
what they make us send goes out in order with everything else (one outgoing BIO, drained by
one writer at a time).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from typing import Any

import trio

__all__ = ["RECORD_SIZE", "TLSStream"]

#: The largest TLS record's plaintext: small buffers are coalesced up to this before writing.
RECORD_SIZE = 1 << 14
_READ_SIZE = 1 << 16


class TLSStream(trio.abc.Stream):
    """TLS over ``transport_stream`` (a ``trio.SocketStream``); call :meth:`do_handshake`
    first. ``server_hostname`` is checked against the peer's certificate (client side)."""

    def __init__(
        self,
        transport_stream: trio.SocketStream,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self.socket = transport_stream.socket
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ssl_context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self._handshaken = False
        self._broken: BaseException | None = None
        self._closed = False
        self._close_notified = False
        self._receiving = False
        self._sending = False
        self._drained = False  # the last read emptied the socket: wait before the next one

    # -- what the handshake agreed -----------------------------------------------------------

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._ssl.version()

    # -- the handshake --------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the TLS handshake (idempotent). Cancellable at every wait; failures raise
        ``BrokenResourceError`` from the ``SSLError`` (the alert, if any, is sent first)."""
        self._check_usable()
        if self._handshaken:
            await trio.lowlevel.checkpoint()
            return
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._send_outgoing_nowait()  # the alert: tell the peer why
                raise self._break(exc) from exc
            await self._send_outgoing()
            if not await self._fill():
                # As describe_error says it of OpenSSL's UNEXPECTED_EOF_WHILE_READING.
                raise self._break(None, "TLS: the peer closed the connection during the handshake")
        self._handshaken = True
        await self._send_outgoing()

    # -- receiving ------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext; ``b""`` once the peer sent ``close_notify``.
        Always a checkpoint; waits for the socket only when nothing is left to decrypt."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            size = max_bytes or _READ_SIZE
            if self._incoming.pending or self._ssl.pending() or not self._drained:
                await trio.lowlevel.checkpoint()
            # else the first read waits for the socket: that is the checkpoint.
            while True:
                self._check_usable()
                data = self._decrypt(size)
                if data is not None:
                    return data
                await self._read_socket()
        finally:
            self._receiving = False

    def _decrypt(self, size: int) -> bytes | None:
        """Plaintext already here (b"" once the peer sent close_notify), or None: read the
        socket."""
        if self._close_notified:
            return b""
        if not self._incoming.pending and not self._ssl.pending():
            return None
        chunks = []
        got = 0
        try:
            while got < size:
                chunk = self._ssl.read(size - got)
                if not chunk:  # the peer's close_notify (SSLObject.read returns b"")
                    self._close_notified = True
                    break
                chunks.append(chunk)
                got += len(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._close_notified = True
        except ssl.SSLError as exc:
            raise self._break(exc) from exc
        # A post-handshake message that needs an answer (a TLS 1.3 key update) left it in the
        # outgoing BIO: it goes out with the next write, in order (see wants_write).
        if not chunks:
            return b"" if self._close_notified else None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _read_socket(self) -> None:
        """Move ciphertext from the socket into the incoming BIO (waiting if there is none);
        end of stream without ``close_notify`` raises ``BrokenResourceError``."""
        if not await self._fill():
            raise self._break(None)

    async def _fill(self) -> bool:
        """Read ciphertext into the incoming BIO, waiting for the socket first when the last
        read emptied it (a read then would fail with EAGAIN); False at end of stream."""
        if self._drained:
            await trio.lowlevel.wait_readable(self.socket)
        while True:
            fd = self.socket.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the stream was closed")
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.socket)
                continue
            except OSError as exc:
                raise self._break(exc) from exc
            self._drained = len(data) < _READ_SIZE
            if not data:
                self._incoming.write_eof()
                return False
            self._incoming.write(data)
            return True

    # -- sending --------------------------------------------------------------------------------

    def encrypt(self, buffers: list[Any]) -> bytes:
        """Encrypt ``buffers`` (bytes-like) and return all the ciphertext waiting to be sent,
        these records included: the caller must write it all, in order, before the next call's
        output. Buffers smaller than a record are coalesced into records of up to 16 KiB."""
        self._check_usable()
        write = self._ssl.write
        try:
            small: list[Any] = []
            size = 0
            for buf in buffers:
                n = len(buf)
                if n >= RECORD_SIZE:
                    if small:
                        write(b"".join(small))
                        small, size = [], 0
                    write(buf)
                    continue
                small.append(buf)
                size += n
                if size >= RECORD_SIZE:
                    write(b"".join(small))
                    small, size = [], 0
            if small:
                write(small[0] if len(small) == 1 else b"".join(small))
        except ssl.SSLWantReadError as exc:  # only a renegotiation makes a write want to read
            raise self._break(exc, "TLS renegotiation is not supported") from exc
        except ssl.SSLError as exc:
            raise self._break(exc) from exc
        return self._outgoing.read()

    @property
    def wants_write(self) -> bool:
        """Ciphertext is waiting in the outgoing BIO (a reply to a post-handshake message)."""
        return bool(self._outgoing.pending)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            ciphertext = self.encrypt([data]) if data else self._outgoing.read()
            await self._send_raw(ciphertext)
        finally:
            self._sending = False

    async def send_raw(self, ciphertext: bytes | bytearray | memoryview) -> None:
        """Send ciphertext that :meth:`encrypt` returned (what a direct write left over)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            await self._send_raw(ciphertext)
        finally:
            self._sending = False

    async def _send_raw(self, ciphertext: bytes | bytearray | memoryview) -> None:
        if not ciphertext:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self.transport_stream.send_all(ciphertext)
        except trio.BrokenResourceError as exc:
            self._broken = exc
            raise

    async def _send_outgoing(self) -> None:
        if self._outgoing.pending:
            await self._send_raw(self._outgoing.read())

    def _send_outgoing_nowait(self) -> None:
        """Best effort, without waiting: an alert before giving up, close_notify at close."""
        data = self._outgoing.read()
        fd = self.socket.fileno()
        if data and fd >= 0:
            with contextlib.suppress(OSError):
                os.write(fd, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send ``close_notify`` if the socket takes it at once (never waiting for the peer's),
        then close the socket. Always a checkpoint."""
        if not self._closed:
            self._closed = True
            if self._handshaken and self._broken is None and not self._sending:
                # Raises SSLWantReadError: the peer's close_notify is not here (nor awaited).
                with contextlib.suppress(ssl.SSLError, ValueError):
                    self._ssl.unwrap()
                self._send_outgoing_nowait()
        await self.transport_stream.aclose()

    # -- errors ---------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the TLS connection is broken") from self._broken

    def _break(self, cause: BaseException | None, message: str = "") -> trio.BrokenResourceError:
        """Mark the stream broken; the error to raise (``from cause``)."""
        if not message and cause is None:
            message = "the peer closed the connection without close_notify"
        error = trio.BrokenResourceError(message)
        self._broken = cause or error
        return error
