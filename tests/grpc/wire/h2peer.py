"""A raw HTTP/2 peer (plain h2, nothing of ours) wired in memory to a sans-IO connection.

The wire tests drive :class:`ServerConnection` / :class:`ClientConnection` synchronously: the
peer is an ``h2.connection.H2Connection`` on the other side, so every byte either way is real
HTTP/2 produced or parsed by an implementation we did not write.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame

from prism.grpc.wire.client_conn import ClientConnection
from prism.grpc.wire.events import Event
from prism.grpc.wire.h2conn import Settings
from prism.grpc.wire.server_conn import ServerConnection

Headers = list[tuple[bytes, bytes]]


def grpc_frame(payload: bytes, flag: int = 0, length: int | None = None) -> bytes:
    """A length-prefixed gRPC message, built by hand."""
    return struct.pack(">BI", flag, len(payload) if length is None else length) + payload


def request_headers(
    path: bytes = b"/pkg.Svc/Method", *, drop: tuple[bytes, ...] = (), **extra: bytes
) -> Headers:
    """Headers a well-behaved gRPC client sends; ``extra`` overrides or adds (``_`` → ``-``)."""
    base: dict[bytes, bytes] = {
        b":method": b"POST",
        b":scheme": b"http",
        b":path": path,
        b":authority": b"example.test",
        b"content-type": b"application/grpc",
        b"te": b"trailers",
    }
    for key, value in extra.items():
        base[key.replace("_", "-").encode()] = value
    return [(k, v) for k, v in base.items() if k not in drop]


class Peer:
    """One side: a raw h2 connection, and what it received."""

    def __init__(self, *, client_side: bool, initial_window_size: int | None = None) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        if initial_window_size is not None:
            self.h2.local_settings = h2.settings.Settings(
                client=client_side,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size},
            )
        self.h2.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.raw: list[bytes] = []  # extra bytes to send verbatim after h2's

    def of(self, kind: type[Any], stream_id: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind)
            and (stream_id is None or getattr(e, "stream_id", None) == stream_id)
        ]

    def headers(self, stream_id: int) -> dict[bytes, bytes]:
        """The response/request headers (first HEADERS) the peer got on ``stream_id``."""
        kinds = (h2.events.ResponseReceived, h2.events.RequestReceived)
        found = [e for e in self.events if isinstance(e, kinds) and e.stream_id == stream_id]
        assert found, f"no headers on stream {stream_id}"
        return dict(found[0].headers)

    def trailers(self, stream_id: int) -> dict[bytes, bytes]:
        found = self.of(h2.events.TrailersReceived, stream_id)
        assert found, f"no trailers on stream {stream_id}"
        return dict(found[0].headers)

    def data(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(h2.events.DataReceived, stream_id))

    def inject(self, frame: hyperframe.frame.Frame) -> None:
        self.raw.append(frame.serialize())

    def take_output(self) -> bytes:
        out = self.h2.data_to_send() + b"".join(self.raw)
        self.raw.clear()
        return out


class Link:
    """A sans-IO connection of ours and a raw h2 peer, moving bytes until both are quiet."""

    def __init__(self, ours: ServerConnection | ClientConnection, peer: Peer) -> None:
        self.ours = ours
        self.peer = peer
        self.events: list[Event] = []  # what our side reported
        self.wire_to_peer: list[bytes] = []
        ours.initiate_connection()
        self.pump()

    def pump(self, *, deliver_to_peer: bool = True) -> list[Event]:
        """Exchange bytes until nothing moves; returns our side's new events.

        With ``deliver_to_peer=False`` our output is collected but never fed to the peer (a peer
        that stops reading: it sends no WINDOW_UPDATE and no acknowledgements).
        """
        new: list[Event] = []
        while True:
            to_ours = self.peer.take_output()
            if to_ours:
                new += self.ours.receive_data(to_ours)
                while getattr(self.ours, "input_pending", False):  # over one pass's frames
                    new += self.ours.receive_data(b"")
            to_peer = self.ours.data_to_send()
            if to_peer:
                self.wire_to_peer.append(to_peer)
                if deliver_to_peer:
                    self.peer.events += self.peer.h2.receive_data(to_peer)
            if not to_ours and not to_peer:
                break
        self.events += new
        return new

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def server_link(
    settings: Settings | None = None,
    *,
    max_receive_message_size: int = 4 << 20,
    peer_window: int | None = None,
    compression: str | None = None,
) -> Link:
    server = ServerConnection(
        settings, max_receive_message_size=max_receive_message_size, compression=compression
    )
    return Link(server, Peer(client_side=True, initial_window_size=peer_window))


def client_link(
    settings: Settings | None = None,
    *,
    max_receive_message_size: int = 4 << 20,
    peer_window: int | None = None,
) -> Link:
    client = ClientConnection(
        settings, authority="example.test", max_receive_message_size=max_receive_message_size
    )
    return Link(client, Peer(client_side=False, initial_window_size=peer_window))


def parse_frames(data: bytes) -> list[hyperframe.frame.Frame]:
    """Split raw HTTP/2 bytes into frames (hyperframe only; no connection state involved)."""
    frames = []
    pos = 0
    while pos < len(data):
        frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames
