"""A client stream that arrives in reads of a known size: the peer for callgrind counts.

`python -m bench.trickle_client HOST:PORT COUNT SIZE PER_READ` opens one
`prism.bench.v1.Echo/ClientStream` call and sends COUNT messages of SIZE payload bytes, each in
its own DATA frame as grpcio sends them, PER_READ messages at a time: after each batch it
sends a PING and waits for its ACK, so the server reads each batch on its own (one batch, one
read), whatever the server's speed. grpcio's own client (bench/stream_client.py) trickles
~6 messages per read at full speed, but many more to a server slowed down by valgrind; this
one keeps the per-read work the same under callgrind, so instruction counts per message
compare the stacks' receive paths as grpcio's client at speed would exercise them. The PING
and its ACK add a small, constant cost per read. Prints one JSON line like stream_client.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events

SERVICE = "prism.bench.v1.Echo"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def main() -> None:
    target = sys.argv[1]
    count, size, per_read = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    host, _, port = target.rpartition(":")
    message = b"\x0a" + varint(size) + bytes(size)
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 24)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", target),
            (":path", f"/{SERVICE}/ClientStream"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    sock.sendall(conn.data_to_send())
    response = bytearray()
    status: str | None = None
    pings = 0

    def pump() -> list[h2.events.Event]:
        nonlocal status
        data = sock.recv(1 << 16)
        if not data:
            raise SystemExit("the server closed the connection")
        events = conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                response.extend(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.TrailersReceived):
                status = dict(event.headers).get(b"grpc-status", b"?").decode()
            elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                raise SystemExit(f"stream ended early: {event}")
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        return events

    start = time.perf_counter()
    sent = 0
    while sent < count:
        batch = min(per_read, count - sent)
        for _ in range(batch):
            room = conn.local_flow_control_window(sid)
            while min(room, conn.max_outbound_frame_size) < len(framed):
                pump()  # wait for the server's WINDOW_UPDATE
                room = conn.local_flow_control_window(sid)
            conn.send_data(sid, framed)
        sent += batch
        pings += 1
        conn.ping(pings.to_bytes(8, "big"))
        sock.sendall(conn.data_to_send())
        acked = False
        while not acked:
            acked = any(isinstance(e, h2.events.PingAckReceived) for e in pump())
    conn.end_stream(sid)
    sock.sendall(conn.data_to_send())
    while status is None:
        pump()
    elapsed = time.perf_counter() - start
    sock.close()
    if status != "0":
        raise SystemExit(f"grpc-status {status}")
    summary = bytes(response[5:])
    fields, pos = {}, 0
    while pos < len(summary):
        key = summary[pos]
        pos += 1
        value = shift = 0
        while True:
            byte = summary[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields[key >> 3] = value
    received, total = fields.get(1, 0), fields.get(2, 0)
    if received != count or total != count * size:
        raise SystemExit(f"{received} messages ({total} bytes) arrived, not {count}")
    print(json.dumps({"messages": received, "bytes": total, "elapsed_s": elapsed, "reads": pings}))


if __name__ == "__main__":
    main()
