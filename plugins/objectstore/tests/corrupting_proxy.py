"""A TCP proxy in front of S3 that flips the first byte of every PUT body it forwards, the rest
verbatim: what a faulty hop between the plugin and the server does to a part."""

from __future__ import annotations

import trio

__all__ = ["CorruptingProxy"]


class CorruptingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.corrupted = 0  # PUT bodies altered
        self.endpoint = ""

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.endpoint)

    async def _serve(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(self.host, self.port) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._answers, server, client, nursery.cancel_scope)
            await self._requests(client, server)
            nursery.cancel_scope.cancel()

    async def _answers(
        self, server: trio.SocketStream, client: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        while data := await server.receive_some(1 << 16):
            await client.send_all(data)
        scope.cancel()

    async def _requests(self, client: trio.SocketStream, server: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await client.receive_some(1 << 16)
                if not data:
                    return
                buffer += data
            end = buffer.index(b"\r\n\r\n") + 4
            head = bytes(buffer[:end])
            del buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await server.send_all(head)
            flip = head.startswith(b"PUT ") and length > 0
            while length:
                if not buffer:
                    data = await client.receive_some(min(length, 1 << 16))
                    if not data:
                        return
                    buffer += data
                piece = bytearray(buffer[:length])
                del buffer[: len(piece)]
                if flip:
                    piece[0] ^= 0xFF
                    flip = False
                    self.corrupted += 1
                length -= len(piece)
                await server.send_all(piece)
