"""ServerConnection driven synchronously by a raw h2 client (see h2peer.py)."""

from __future__ import annotations

import h2.errors
import h2.events
import h2.exceptions
import hyperframe.frame
import pytest
from h2peer import Link, Peer, grpc_frame, parse_frames, request_headers, server_link

from prism.grpc.wire import compression as codec
from prism.grpc.wire.events import (
    GoAwayReceived,
    InputEnded,
    MessagesReceived,
    RequestReceived,
    StreamAborted,
)
from prism.grpc.wire.h2conn import Settings
from prism.grpc.wire.server_conn import ServerConnection
from prism.grpc.wire.status import Status


def open_stream(link: Link, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    sid: int = link.peer.h2.get_next_available_stream_id()
    link.peer.h2.send_headers(sid, headers if headers is not None else request_headers())
    link.pump()
    return sid


def send(link: Link, sid: int, data: bytes, *, end: bool = False) -> None:
    link.peer.h2.send_data(sid, data, end_stream=end)
    link.pump()


def received(link: Link) -> list[bytes]:
    """Every message the server reported, in order."""
    return [m for event in link.of(MessagesReceived) for m in event.messages]


def status_of(headers: dict[bytes, bytes]) -> Status:
    return Status(int(headers[b"grpc-status"]))


# -- request validation -------------------------------------------------------------------------


def test_server_connection_reports_a_valid_request() -> None:
    link = server_link()
    sid = open_stream(
        link,
        request_headers(b"/pkg.Svc/Echo", x_trace=b"abc", blob_bin=b"AAEC", grpc_timeout=b"1500m"),
    )
    [request] = link.of(RequestReceived)
    assert request.stream_id == sid
    assert request.method == "/pkg.Svc/Echo"
    assert request.authority == "example.test"
    assert request.timeout == pytest.approx(1.5)
    assert request.metadata == [("x-trace", "abc"), ("blob-bin", b"\x00\x01\x02")]


def test_server_connection_rejects_non_post_with_http_405() -> None:
    link = server_link()
    sid = open_stream(link, request_headers(**{":method": b"GET"}))
    assert link.of(RequestReceived) == []
    assert link.peer.headers(sid)[b":status"] == b"405"
    assert link.peer.of(h2.events.StreamEnded, sid)


def test_server_connection_rejects_wrong_content_type_with_http_415() -> None:
    link = server_link()
    sid = open_stream(link, request_headers(content_type=b"application/json"))
    assert link.of(RequestReceived) == []
    assert link.peer.headers(sid)[b":status"] == b"415"


def test_server_connection_accepts_content_type_with_suffix() -> None:
    link = server_link()
    open_stream(link, request_headers(content_type=b"application/grpc+proto"))
    assert len(link.of(RequestReceived)) == 1


def test_server_connection_missing_te_trailers_is_trailers_only_internal() -> None:
    # grpc C-core answers a request without "te: trailers" with a trailers-only INTERNAL
    # (HTTP 200, grpc-status 13) rather than an HTTP error; we do the same.
    link = server_link()
    sid = open_stream(link, request_headers(drop=(b"te",)))
    assert link.of(RequestReceived) == []
    headers = link.peer.headers(sid)
    assert headers[b":status"] == b"200"
    assert status_of(headers) is Status.INTERNAL
    assert b"te" in headers[b"grpc-message"]
    assert link.peer.of(h2.events.StreamEnded, sid)
    assert link.peer.of(h2.events.TrailersReceived, sid) == []


@pytest.mark.parametrize("value", [b"", b"10", b"1x", b"123456789S", b"-1S", b"1.5S", b"S"])
def test_server_connection_bad_grpc_timeout_is_invalid_argument(value: bytes) -> None:
    link = server_link()
    sid = open_stream(link, request_headers(grpc_timeout=value))
    assert link.of(RequestReceived) == []
    headers = link.peer.headers(sid)
    assert status_of(headers) is Status.INVALID_ARGUMENT
    assert link.peer.of(h2.events.StreamEnded, sid)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"201m", 0.201), (b"30S", 30.0), (b"99999999n", 0.099999999), (b"2H", 7200.0)],
)
def test_server_connection_accepts_grpcio_style_timeouts(value: bytes, seconds: float) -> None:
    link = server_link()
    open_stream(link, request_headers(grpc_timeout=value))
    [request] = link.of(RequestReceived)
    assert request.timeout == pytest.approx(seconds)


def unvalidated(link: Link) -> Link:
    """Let the raw client send header blocks h2 would refuse to send."""
    link.peer.h2.config.validate_outbound_headers = False
    link.peer.h2.config.normalize_outbound_headers = False
    return link


def test_server_connection_missing_path_is_trailers_only_internal() -> None:
    # h2 no longer validates inbound headers for us (see h2conn): the request is refused,
    # the connection carries on.
    link = unvalidated(server_link())
    sid = open_stream(link, request_headers(drop=(b":path",)))
    assert link.of(RequestReceived) == []
    headers = link.peer.headers(sid)
    assert status_of(headers) is Status.INTERNAL
    assert b":path" in headers[b"grpc-message"]
    open_stream(link)
    assert len(link.of(RequestReceived)) == 1
    assert link.of(GoAwayReceived) == []
    assert not link.ours.closed


@pytest.mark.parametrize("name", [b"X-Upper", b"x y", b"x:y", b"", b"x\x00"])
def test_server_connection_malformed_header_name_fails_only_its_stream(name: bytes) -> None:
    link = unvalidated(server_link())
    sid = open_stream(link, [*request_headers(), (name, b"v")])
    assert link.of(RequestReceived) == []
    headers = link.peer.headers(sid)
    assert status_of(headers) is Status.INTERNAL
    assert b"malformed header name" in headers[b"grpc-message"]
    open_stream(link)
    assert len(link.of(RequestReceived)) == 1


def test_server_connection_metadata_values_lose_surrounding_whitespace() -> None:
    # grpcio sends what it is given: " x " must not cost the connection (RFC 9110 §5.5).
    link = unvalidated(server_link())
    open_stream(link, request_headers(x_a=b" padded ", x_b=b"\tt", x_c=b"in side"))
    [request] = link.of(RequestReceived)
    assert request.metadata == [("x-a", "padded"), ("x-b", "t"), ("x-c", "in side")]


def test_server_connection_pseudo_headers_anywhere_are_ignored() -> None:
    link = unvalidated(server_link())
    headers = request_headers()
    sid = open_stream(link, [*headers[2:], *headers[:2], (b":unknown", b"x")])
    [request] = link.of(RequestReceived)
    assert (request.stream_id, request.method, request.metadata) == (sid, "/pkg.Svc/Method", [])


def test_server_connection_unsupported_grpc_encoding_is_unimplemented() -> None:
    link = server_link()
    sid = open_stream(link, request_headers(grpc_encoding=b"br"))
    assert link.of(RequestReceived) == []
    headers = link.peer.headers(sid)
    assert status_of(headers) is Status.UNIMPLEMENTED
    # compression.md: the reply names what is supported, in the message and the header.
    assert b"'br'" in headers[b"grpc-message"]
    assert b"gzip, deflate, identity" in headers[b"grpc-message"]
    assert headers[b"grpc-accept-encoding"] == b"gzip,deflate,identity"


def test_server_connection_identity_grpc_encoding_is_accepted() -> None:
    link = server_link()
    open_stream(link, request_headers(grpc_encoding=b"identity"))
    assert len(link.of(RequestReceived)) == 1


def test_server_connection_malformed_bin_metadata_is_internal() -> None:
    link = server_link()
    sid = open_stream(link, request_headers(blob_bin=b"!!not base64!!"))
    assert link.of(RequestReceived) == []
    assert status_of(link.peer.headers(sid)) is Status.INTERNAL


# -- messages -----------------------------------------------------------------------------------


def test_server_connection_reassembles_messages_across_frames() -> None:
    link = server_link()
    sid = open_stream(link)
    data = grpc_frame(b"a" * 40000) + grpc_frame(b"") + grpc_frame(b"bc")
    for i in range(0, len(data), 7000):
        send(link, sid, data[i : i + 7000])
    send(link, sid, b"", end=True)
    messages = received(link)
    assert messages == [b"a" * 40000, b"", b"bc"]
    assert link.of(InputEnded) == [InputEnded(sid)]


def test_server_connection_compressed_flag_without_grpc_encoding_is_internal() -> None:
    link = server_link()
    sid = open_stream(link)
    send(link, sid, grpc_frame(b"zz", flag=1))
    [aborted] = link.of(StreamAborted)
    assert aborted.error.status is Status.INTERNAL
    assert received(link) == []
    headers = link.peer.headers(sid)
    assert status_of(headers) is Status.INTERNAL
    assert b"compressed" in headers[b"grpc-message"]
    # The client is told to stop sending the rest of the request.
    [reset] = link.peer.of(h2.events.StreamReset, sid)
    assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR


def test_server_connection_oversize_message_is_resource_exhausted_before_buffering() -> None:
    link = server_link(max_receive_message_size=1000)
    sid = open_stream(link)
    # Only the 5-byte prefix announcing 1001 bytes: refused before any body arrives.
    send(link, sid, grpc_frame(b"", length=1001))
    [aborted] = link.of(StreamAborted)
    assert aborted.error.status is Status.RESOURCE_EXHAUSTED
    headers = link.peer.headers(sid)
    assert status_of(headers) is Status.RESOURCE_EXHAUSTED
    assert b"1001" in headers[b"grpc-message"]


def test_server_connection_message_at_the_limit_is_accepted() -> None:
    link = server_link(max_receive_message_size=1000)
    sid = open_stream(link)
    send(link, sid, grpc_frame(b"x" * 1000), end=True)
    assert received(link) == [b"x" * 1000]


def test_server_connection_request_ending_mid_message_is_internal() -> None:
    link = server_link()
    sid = open_stream(link)
    send(link, sid, grpc_frame(b"hello")[:-2], end=True)
    [aborted] = link.of(StreamAborted)
    assert aborted.error.status is Status.INTERNAL
    assert link.of(InputEnded) == []
    assert status_of(link.peer.headers(sid)) is Status.INTERNAL


def test_server_connection_client_reset_aborts_the_stream_as_cancelled() -> None:
    link = server_link()
    sid = open_stream(link)
    link.peer.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    link.pump()
    [aborted] = link.of(StreamAborted)
    assert aborted.stream_id == sid
    assert aborted.error.status is Status.CANCELLED


# -- responses ----------------------------------------------------------------------------------


def test_server_connection_trailers_only_when_no_headers_were_sent() -> None:
    link = server_link()
    sid = open_stream(link)
    link.ours.send_trailers(sid, Status.NOT_FOUND, "no such key", [("x-why", "gone")])
    link.pump()
    headers = link.peer.headers(sid)
    assert headers[b":status"] == b"200"
    assert headers[b"content-type"] == b"application/grpc"
    assert status_of(headers) is Status.NOT_FOUND
    assert headers[b"grpc-message"] == b"no such key"
    assert headers[b"x-why"] == b"gone"
    assert link.peer.of(h2.events.StreamEnded, sid)
    assert link.peer.of(h2.events.TrailersReceived, sid) == []
    assert link.peer.of(h2.events.DataReceived, sid) == []


def test_server_connection_headers_messages_then_trailers() -> None:
    link = server_link()
    sid = open_stream(link)
    send(link, sid, grpc_frame(b"req"), end=True)
    link.ours.send_headers(sid, [("x-initial", "1"), ("raw-bin", b"\xff\x00")])
    link.ours.send_message(sid, b"one")
    link.ours.send_message(sid, b"x" * 50_000)
    link.ours.send_trailers(sid, Status.OK, "", [("x-final", "2")])
    link.pump()
    headers = link.peer.headers(sid)
    assert headers[b":status"] == b"200"
    assert headers[b"x-initial"] == b"1"
    assert headers[b"raw-bin"] == b"/wA"  # base64 without padding
    assert b"grpc-status" not in headers
    assert link.peer.data(sid) == grpc_frame(b"one") + grpc_frame(b"x" * 50_000)
    trailers = link.peer.trailers(sid)
    assert status_of(trailers) is Status.OK
    assert trailers[b"x-final"] == b"2"
    assert b":status" not in trailers


def test_server_connection_non_ascii_status_message_is_percent_encoded() -> None:
    link = server_link()
    sid = open_stream(link)
    link.ours.send_trailers(sid, Status.INTERNAL, "nöt 100% ✓")
    link.pump()
    assert link.peer.headers(sid)[b"grpc-message"] == b"n%C3%B6t 100%25 %E2%9C%93"


def test_server_connection_early_response_resets_the_unfinished_request() -> None:
    # Answering before the client half-closed: the response ends with trailers and then
    # RST_STREAM(NO_ERROR) asks the client to stop sending, so the stream does not stay
    # half-open (and count against max_concurrent_streams) forever.
    link = server_link()
    sid = open_stream(link)
    link.ours.send_message(sid, b"early")
    link.ours.send_trailers(sid, Status.OK)
    link.ours.finish(sid)
    link.pump()
    assert status_of(link.peer.trailers(sid)) is Status.OK
    [reset] = link.peer.of(h2.events.StreamReset, sid)
    assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert link.ours._h2.open_inbound_streams == 0


def test_server_connection_half_open_streams_do_not_exhaust_max_concurrent_streams() -> None:
    link = server_link(Settings(max_concurrent_streams=10))
    for _ in range(30):
        sid = open_stream(link)
        [request] = link.of(RequestReceived)[-1:]
        assert request.stream_id == sid
        link.ours.send_trailers(sid, Status.OK)
        link.ours.finish(sid)
        link.pump()
    assert len(link.of(RequestReceived)) == 30


def test_server_connection_forgets_closed_streams() -> None:
    # h2 drops closed streams only while counting open ones; we count rarely (see h2streams),
    # but often enough that a long-lived connection holds few closed streams.
    link = server_link(Settings(max_concurrent_streams=1000))
    for _ in range(500):
        sid = open_stream(link)
        send(link, sid, grpc_frame(b"x"), end=True)
        link.ours.send_message(sid, b"y")
        link.ours.send_trailers(sid, Status.OK)
        link.ours.finish(sid)
        link.pump()
    assert len(link.of(RequestReceived)) == 500
    assert len(link.ours._h2.streams) <= 128
    assert link.ours._h2.open_inbound_streams == 0


# -- flow control -------------------------------------------------------------------------------


def test_server_connection_queues_behind_a_peer_that_never_sends_window_update() -> None:
    link = server_link()  # the raw client advertises the default 65,535-byte windows
    sid = open_stream(link)
    big = b"m" * (1 << 20)
    link.ours.send_message(sid, big)
    link.pump()
    sent = len(link.peer.data(sid))
    assert sent == 65535
    assert link.ours.pending(sid) == len(big) + 5 - 65535
    # More data goes to the queue, not the wire; pending grows by exactly what was queued.
    link.ours.send_message(sid, b"n" * 1000)
    for _ in range(3):
        link.pump()
    assert len(link.peer.data(sid)) == 65535
    assert link.ours.pending(sid) == len(big) + 5 + 1005 - 65535
    # The peer reads and opens its windows: the queue drains in order.
    link.peer.h2.increment_flow_control_window(1 << 21)
    link.peer.h2.increment_flow_control_window(1 << 21, stream_id=sid)
    link.pump()
    assert link.ours.pending(sid) == 0
    assert link.peer.data(sid) == grpc_frame(big) + grpc_frame(b"n" * 1000)


def test_server_connection_trailers_wait_behind_queued_data() -> None:
    link = server_link()
    sid = open_stream(link)
    link.ours.send_message(sid, b"m" * 100_000)
    link.ours.send_trailers(sid, Status.OK)
    link.ours.finish(sid)
    link.pump()
    assert link.peer.of(h2.events.TrailersReceived, sid) == []
    assert link.ours.has_pending_output()
    link.peer.h2.increment_flow_control_window(1 << 20)
    link.peer.h2.increment_flow_control_window(1 << 20, stream_id=sid)
    link.pump()
    assert status_of(link.peer.trailers(sid)) is Status.OK
    assert not link.ours.has_pending_output()


def _ended_early(link: Link, sid: int) -> None:
    link.ours.send_trailers(sid, Status.RESOURCE_EXHAUSTED, "cut")
    link.ours.finish(sid)
    link.pump()


def _open_windows(link: Link, sid: int) -> None:
    link.peer.h2.increment_flow_control_window(1 << 24)
    link.peer.h2.increment_flow_control_window(1 << 24, stream_id=sid)
    link.pump()


def test_server_connection_discard_unsent_keeps_the_rest_of_a_message_begun() -> None:
    link = server_link()  # 65,535-byte windows: 65 messages of 1,005 bytes and part of one
    sid = open_stream(link)
    for i in range(100):
        link.ours.send_message(sid, bytes([i]) * 1000)
    link.pump()
    assert len(link.peer.data(sid)) == 65535
    assert link.ours.discard_unsent(sid) == 100 * 1005 - 66 * 1005
    assert link.ours.pending(sid) == 66 * 1005 - 65535
    _ended_early(link, sid)
    assert link.peer.of(h2.events.TrailersReceived, sid) == []  # behind the 66th's rest
    _open_windows(link, sid)
    assert link.peer.data(sid) == b"".join(grpc_frame(bytes([i]) * 1000) for i in range(66))
    assert status_of(link.peer.trailers(sid)) is Status.RESOURCE_EXHAUSTED
    assert not link.ours.has_pending_output()


def test_server_connection_discard_unsent_at_a_message_boundary_ends_at_once() -> None:
    link = server_link()
    sid = open_stream(link)
    for _ in range(60):  # 51 of these 1,285-byte frames fill 65,535 bytes exactly
        link.ours.send_message(sid, b"m" * 1280)
    link.pump()
    assert link.ours.discard_unsent(sid) == 9 * 1285
    _ended_early(link, sid)  # no WINDOW_UPDATE needed: the trailers go out now
    assert link.peer.data(sid) == grpc_frame(b"m" * 1280) * 51
    assert status_of(link.peer.trailers(sid)) is Status.RESOURCE_EXHAUSTED
    assert not link.ours.has_pending_output()


def test_server_connection_discard_unsent_keeps_one_message_of_a_batch_begun() -> None:
    # A streaming handler's small messages are batched into frame-sized chunks (13 of these
    # per chunk): the window (65,535 bytes) ends inside the 66th message, in the middle of the
    # sixth chunk. Only that message's rest is kept, not the rest of its chunk, and the batch
    # not yet handed to HTTP/2 is dropped too.
    link = server_link()
    sid = open_stream(link)
    for i in range(100):
        link.ours.send_message(sid, bytes([i]) * 1000, batch=True)
    link.pump()
    assert len(link.peer.data(sid)) == 65535
    for i in range(100, 103):  # batched, not yet taken as output
        link.ours.send_message(sid, bytes([i]) * 1000, batch=True)
    assert link.ours.discard_unsent(sid) == 103 * 1005 - 66 * 1005
    assert link.ours.pending(sid) == 66 * 1005 - 65535
    _ended_early(link, sid)
    _open_windows(link, sid)
    assert link.peer.data(sid) == b"".join(grpc_frame(bytes([i]) * 1000) for i in range(66))
    assert status_of(link.peer.trailers(sid)) is Status.RESOURCE_EXHAUSTED
    assert not link.ours.has_pending_output()


@pytest.mark.parametrize("window", [3, 5, 70_000])
def test_server_connection_discard_unsent_keeps_a_large_message_begun(window: int) -> None:
    # Large messages queue their prefix and payload apart: the window ends inside the prefix
    # (3), right after it (5), or inside the payload (70,000).
    link = server_link(peer_window=window)
    sid = open_stream(link)
    first, second = b"a" * 100_000, b"b" * 100_000
    link.ours.send_message(sid, first)
    link.ours.send_message(sid, second)
    link.pump()
    assert link.ours.discard_unsent(sid) == len(second) + 5
    _ended_early(link, sid)
    _open_windows(link, sid)
    assert link.peer.data(sid) == grpc_frame(first)
    assert status_of(link.peer.trailers(sid)) is Status.RESOURCE_EXHAUSTED


def test_server_connection_discard_unsent_with_nothing_queued_drops_nothing() -> None:
    link = server_link()
    sid = open_stream(link)
    link.ours.send_message(sid, b"x" * 10)
    link.pump()
    assert link.ours.discard_unsent(sid) == 0
    _ended_early(link, sid)
    assert link.peer.data(sid) == grpc_frame(b"x" * 10)
    assert status_of(link.peer.trailers(sid)) is Status.RESOURCE_EXHAUSTED


def test_server_connection_end_at_once_at_a_message_boundary_sends_the_trailers() -> None:
    link = server_link()
    sid = open_stream(link)
    for _ in range(60):  # 51 of these 1,285-byte frames fill 65,535 bytes exactly
        link.ours.send_message(sid, b"m" * 1280, batch=True)
    link.pump()
    assert link.ours.end_at_once(sid, Status.RESOURCE_EXHAUSTED, "cut", [("why", "slow")]) is False
    link.ours.finish(sid)
    link.pump()  # no WINDOW_UPDATE needed
    assert link.peer.data(sid) == grpc_frame(b"m" * 1280) * 51
    trailers = link.peer.trailers(sid)
    assert status_of(trailers) is Status.RESOURCE_EXHAUSTED
    assert (trailers[b"grpc-message"], trailers[b"why"]) == (b"cut", b"slow")
    assert not link.ours.has_pending_output()


def test_server_connection_end_at_once_with_a_message_half_sent_resets_the_stream() -> None:
    link = server_link()  # 65,535-byte windows: 65 messages of 1,005 bytes and part of one
    sid = open_stream(link)
    for i in range(100):
        link.ours.send_message(sid, bytes([i]) * 1000)
    link.pump()
    assert link.ours.end_at_once(sid, Status.RESOURCE_EXHAUSTED, "cut") is True
    link.ours.send_trailers(sid, Status.OK)  # the stream is over: nothing more goes out
    link.ours.finish(sid)
    link.pump()
    [reset] = link.peer.of(h2.events.StreamReset, sid)
    assert reset.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert link.peer.of(h2.events.TrailersReceived, sid) == []
    assert len(link.peer.data(sid)) == 65535
    assert not link.ours.has_pending_output()


def test_server_connection_end_at_once_with_nothing_held_back_sends_the_trailers() -> None:
    link = server_link()
    sid = open_stream(link)
    for i in range(100):
        link.ours.send_message(sid, bytes([i]) * 1000)
    link.pump()
    _open_windows(link, sid)  # all 100 go out: nothing is held back, nothing half-sent
    assert link.ours.end_at_once(sid, Status.RESOURCE_EXHAUSTED, "cut") is False
    link.ours.finish(sid)
    link.pump()
    assert link.peer.data(sid) == b"".join(grpc_frame(bytes([i]) * 1000) for i in range(100))
    assert status_of(link.peer.trailers(sid)) is Status.RESOURCE_EXHAUSTED


def test_server_connection_respects_peer_max_frame_size() -> None:
    link = server_link()
    sid = open_stream(link)
    link.ours.send_message(sid, b"q" * 50_000)
    link.pump()
    sizes = [len(e.data) for e in link.peer.of(h2.events.DataReceived, sid)]
    assert sum(sizes) == 50_005
    assert max(sizes) <= 16384


def test_server_connection_acknowledges_received_bytes_only_as_they_are_consumed() -> None:
    window = 65535
    link = server_link(Settings(initial_window_size=window, connection_window_size=window))
    sid = open_stream(link)
    message = grpc_frame(b"p" * 16000)
    sent = 0
    # The application consumes nothing; keep sending while the peer's window allows.
    while link.peer.h2.local_flow_control_window(sid) >= len(message):
        send(link, sid, message)
        sent += 1
    assert len(received(link)) == sent
    # Nothing consumed, nothing acknowledged: the peer stops within one window.
    assert window - len(message) < sent * len(message) <= window
    stalled = link.peer.h2.local_flow_control_window(sid)
    assert stalled < len(message)
    # Consuming releases the window again.
    link.ours.consumed(sid, sent * len(message))
    link.pump()
    assert link.peer.h2.local_flow_control_window(sid) > stalled + len(message)


def test_server_connection_receive_window_is_what_the_peer_may_still_send() -> None:
    window = 65535
    link = server_link(Settings(initial_window_size=window, connection_window_size=1 << 20))
    sid = open_stream(link)
    assert link.ours.receive_window(sid) == window
    message = grpc_frame(b"p" * 1000)
    for _ in range(10):
        send(link, sid, message)
    # The stream's window, not the connection's (larger), and it agrees with the peer's view.
    assert link.ours.receive_window(sid) == window - 10 * len(message)
    assert link.ours.receive_window(sid) == link.peer.h2.local_flow_control_window(sid)
    link.ours.consumed(sid, 10 * len(message))
    link.pump()
    assert link.ours.receive_window(sid) == link.peer.h2.local_flow_control_window(sid)
    assert link.ours.receive_window(sid + 2) == 0  # no such stream


def test_server_connection_receive_window_is_capped_by_the_connection_window() -> None:
    link = server_link(Settings(initial_window_size=1 << 20, connection_window_size=65535))
    sid = open_stream(link)
    send(link, sid, grpc_frame(b"p" * 10000))
    assert link.ours.receive_window(sid) == 65535 - 10005


def test_server_connection_messages_spanning_reads_stay_within_the_window() -> None:
    # Messages longer than a frame arrive over several reads (an object's 1 MiB chunks). While
    # complete ones wait for the consumer, the beginnings of later ones are withheld too, so
    # the sender stops within about a window instead of the receiver queueing everything.
    window = 65535
    link = server_link(Settings(initial_window_size=window, connection_window_size=window))
    sid = open_stream(link)
    message = grpc_frame(b"m" * 40000)
    data = message * 10
    pos = 0
    while pos < len(data):
        room = min(link.peer.h2.local_flow_control_window(sid), 16384)
        if room <= 0:
            break
        send(link, sid, data[pos : pos + room])  # one read per frame
        pos += room
    got = received(link)
    assert pos < len(data), "the sender was never stopped"
    assert pos <= window + len(message)
    assert len(got) <= window // len(message) + 1
    link.ours.consumed(sid, sum(len(m) + 5 for m in got))  # the consumer catches up
    link.pump()
    assert link.peer.h2.local_flow_control_window(sid) > 0


def test_server_connection_large_message_is_not_starved_by_deferred_acknowledgement() -> None:
    # A single message bigger than the window must still arrive: partial bodies are acked.
    window = 65535
    link = server_link(Settings(initial_window_size=window, connection_window_size=window))
    sid = open_stream(link)
    data = grpc_frame(b"L" * (5 * window))
    pos = 0
    while pos < len(data):
        room = link.peer.h2.local_flow_control_window(sid)
        assert room > 0, "flow control stalled on a partial message"
        chunk = data[pos : pos + min(room, 16384)]
        send(link, sid, chunk)
        pos += len(chunk)
    assert [len(m) for m in received(link)] == [5 * window]


def test_server_connection_messages_larger_than_the_window_are_buffered_one_at_a_time() -> None:
    # Messages larger than the window, none consumed: the first completes (its partial body
    # is acknowledged as it comes), then the window stays shut. What the sender can make us
    # hold is one message and one window, not the whole stream.
    window = 65535
    link = server_link(Settings(initial_window_size=window, connection_window_size=4 * window))
    sid = open_stream(link)
    message = grpc_frame(b"M" * (2 * window))
    sent = 0
    while sent < 10 * len(message):
        room = link.peer.h2.local_flow_control_window(sid)
        if room == 0:
            break
        chunk = message[sent % len(message) :][: min(room, 16384)]
        send(link, sid, chunk)
        sent += len(chunk)
    assert [len(m) for m in received(link)] == [2 * window]
    assert sent <= len(message) + window
    # Taking the message reopens the window: the next one completes.
    link.ours.consumed(sid, len(message))
    link.pump()
    assert link.peer.h2.local_flow_control_window(sid) > 0


# -- connection-level ---------------------------------------------------------------------------


def test_server_connection_goaway_from_client_lets_open_stream_finish() -> None:
    link = server_link()
    sid = open_stream(link)
    # The client announces it is going away (plain h2 would refuse every later frame).
    link.peer.inject(hyperframe.frame.GoAwayFrame(0, last_stream_id=0, error_code=0))
    link.pump()
    assert link.of(GoAwayReceived) == [GoAwayReceived(0, 0)]
    send(link, sid, grpc_frame(b"still here"), end=True)
    assert received(link) == [b"still here"]
    link.ours.send_message(sid, b"reply")
    link.ours.send_trailers(sid, Status.OK)
    link.pump()
    assert link.peer.data(sid) == grpc_frame(b"reply")
    assert status_of(link.peer.trailers(sid)) is Status.OK


def test_server_connection_start_shutdown_refuses_streams_above_last_id() -> None:
    link = server_link()
    first = open_stream(link)
    mark = len(link.wire_to_peer)
    link.ours.start_shutdown()
    # The client opened another stream before it saw the GOAWAY.
    second = link.peer.h2.get_next_available_stream_id()
    link.peer.h2.send_headers(second, request_headers())
    link.peer.h2.send_data(first, grpc_frame(b"in flight"), end_stream=True)
    link.pump(deliver_to_peer=False)
    assert [e.stream_id for e in link.of(RequestReceived)] == [first]
    assert received(link) == [b"in flight"]
    # The in-flight stream still gets its full response after the GOAWAY.
    link.ours.send_message(first, b"done")
    link.ours.send_trailers(first, Status.OK)
    link.pump(deliver_to_peer=False)
    frames = parse_frames(b"".join(link.wire_to_peer[mark:]))
    goaways = [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(first, 0)]
    resets = [f for f in frames if isinstance(f, hyperframe.frame.RstStreamFrame)]
    assert [(r.stream_id, r.error_code) for r in resets] == [
        (second, h2.errors.ErrorCodes.REFUSED_STREAM)
    ]
    sent_on_first = [f for f in frames if f.stream_id == first]
    assert isinstance(sent_on_first[-1], hyperframe.frame.HeadersFrame)
    assert "END_STREAM" in sent_on_first[-1].flags


def test_server_connection_garbage_raises_protocol_error_and_close_sends_goaway() -> None:
    link = server_link()
    with pytest.raises(h2.exceptions.ProtocolError):
        link.ours.receive_data(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\xff" * 64)
    link.ours.close(h2.errors.ErrorCodes.PROTOCOL_ERROR, b"bad frame")
    frames = parse_frames(link.ours.data_to_send())
    [goaway] = [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)]
    assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert link.ours.closed


def test_server_connection_answers_pings() -> None:
    link = server_link()
    link.peer.h2.ping(b"12345678")
    link.pump()
    [ack] = link.peer.of(h2.events.PingAckReceived)
    assert ack.ping_data == b"12345678"


def test_server_connection_accepts_the_large_frames_it_advertised() -> None:
    link = server_link(Settings(max_frame_size=(1 << 24) - 1))
    assert link.peer.h2.max_outbound_frame_size == (1 << 24) - 1
    sid = open_stream(link)
    body = grpc_frame(b"F" * 200_000)
    send(link, sid, body, end=True)  # a single 200 kB DATA frame
    assert [len(m) for m in received(link)] == [200_000]


def test_server_connection_refuses_streams_over_the_limit_without_closing() -> None:
    # A client may open streams before it has seen our SETTINGS: the extra ones are refused
    # with REFUSED_STREAM (a stream error, RFC 9113 §5.1.2); the connection carries on.
    server = ServerConnection(Settings(max_concurrent_streams=2), max_receive_message_size=1000)
    peer = Peer(client_side=True)
    sids = []
    for _ in range(3):
        sid = peer.h2.get_next_available_stream_id()
        peer.h2.send_headers(sid, request_headers(x_n=b"%d" % sid))
        sids.append(sid)
    link = Link(server, peer)  # only now are bytes exchanged
    assert [e.stream_id for e in link.of(RequestReceived)] == sids[:2]
    [reset] = peer.of(h2.events.StreamReset)
    assert (reset.stream_id, reset.error_code) == (sids[2], h2.errors.ErrorCodes.REFUSED_STREAM)
    # HPACK stayed in sync and the connection works: finish a stream, open another.
    server.send_trailers(sids[0], Status.OK)
    server.finish(sids[0])
    link.pump()
    later = open_stream(link, request_headers(x_n=b"later"))
    [request] = [e for e in link.of(RequestReceived) if e.stream_id == later]
    assert request.metadata == [("x-n", "later")]


# -- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_server_connection_inflates_compressed_requests(encoding: str) -> None:
    link = server_link()
    sid = open_stream(link, request_headers(grpc_encoding=encoding.encode()))
    body = b"hello " * 1000
    send(link, sid, grpc_frame(codec.compress(encoding, body), flag=1) + grpc_frame(b"plain"))
    # A message without the flag is not compressed, whatever the stream's encoding.
    assert received(link) == [body, b"plain"]


def test_server_connection_corrupt_compressed_request_is_internal() -> None:
    link = server_link()
    sid = open_stream(link, request_headers(grpc_encoding=b"gzip"))
    send(link, sid, grpc_frame(b"not gzip at all", flag=1))
    [aborted] = link.of(StreamAborted)
    assert aborted.error.status is Status.INTERNAL
    assert status_of(link.peer.headers(sid)) is Status.INTERNAL


def test_server_connection_compressed_request_inflating_past_the_limit_is_resource_exhausted() -> (
    None
):
    link = server_link(max_receive_message_size=1 << 16)
    sid = open_stream(link, request_headers(grpc_encoding=b"gzip"))
    send(link, sid, grpc_frame(codec.compress("gzip", bytes(1 << 20)), flag=1))
    [aborted] = link.of(StreamAborted)
    assert aborted.error.status is Status.RESOURCE_EXHAUSTED
    assert status_of(link.peer.headers(sid)) is Status.RESOURCE_EXHAUSTED
    assert received(link) == []


def test_server_connection_every_response_says_what_it_accepts() -> None:
    link = server_link()
    sid = open_stream(link)
    link.ours.send_message(sid, b"x")  # type: ignore[union-attr]
    link.pump()
    headers = link.peer.headers(sid)
    assert headers[b"grpc-accept-encoding"] == b"gzip,deflate,identity"
    assert b"grpc-encoding" not in headers


def test_server_connection_compresses_responses_for_clients_that_accept_it() -> None:
    link = server_link(compression="gzip")
    sid = open_stream(link, request_headers(grpc_accept_encoding=b"identity, gzip"))
    server = link.ours
    assert isinstance(server, ServerConnection)
    body = b"response " * 500
    server.send_message(sid, body)
    server.send_message(sid, b"in the clear", compress=False)
    server.send_trailers(sid, Status.OK)
    link.pump()
    assert link.peer.headers(sid)[b"grpc-encoding"] == b"gzip"
    data = link.peer.data(sid)
    first_length = int.from_bytes(data[1:5], "big")
    assert data[0] == 1
    assert first_length < len(body) // 10
    assert codec.decompress("gzip", data[5 : 5 + first_length], 1 << 20) == body
    assert data[5 + first_length :] == grpc_frame(b"in the clear")


@pytest.mark.parametrize("accepted", [None, b"identity", b"deflate", b""])
def test_server_connection_never_compresses_with_an_encoding_the_client_did_not_accept(
    accepted: bytes | None,
) -> None:
    link = server_link(compression="gzip")
    extra = {} if accepted is None else {"grpc_accept_encoding": accepted}
    sid = open_stream(link, request_headers(**extra))
    server = link.ours
    assert isinstance(server, ServerConnection)
    server.send_message(sid, b"response " * 500)
    link.pump()
    assert b"grpc-encoding" not in link.peer.headers(sid)
    assert link.peer.data(sid) == grpc_frame(b"response " * 500)


def test_server_connection_unknown_compression_option_is_refused() -> None:
    with pytest.raises(ValueError, match="br"):
        ServerConnection(max_receive_message_size=1 << 20, compression="br")


# -- batched messages ---------------------------------------------------------------------------


def test_server_connection_batched_messages_share_data_frames_in_order() -> None:
    link = server_link()
    sid = open_stream(link)
    server = link.ours
    assert isinstance(server, ServerConnection)
    messages = [b"%04d" % i * 100 for i in range(100)]  # 400-byte messages
    for message in messages:
        server.send_message(sid, message, batch=True)
    server.send_trailers(sid, Status.OK)  # what is still batched goes before the trailers
    link.pump()
    assert link.peer.data(sid) == b"".join(grpc_frame(m) for m in messages)
    frames = link.peer.of(h2.events.DataReceived, sid)
    assert len(frames) < len(messages) // 10  # ~40 messages per 16 KiB frame
    assert max(len(f.data) for f in frames) <= 16384
    assert status_of(link.peer.trailers(sid)) is Status.OK


def test_server_connection_batched_messages_go_out_when_output_is_taken() -> None:
    link = server_link()
    sid = open_stream(link)
    server = link.ours
    assert isinstance(server, ServerConnection)
    server.send_message(sid, b"one", batch=True)
    assert server.has_pending_output()
    link.pump()
    assert link.peer.data(sid) == grpc_frame(b"one")
    assert server.pending(sid) == 0
    # An unbatched message after batched ones keeps the order.
    server.send_message(sid, b"two", batch=True)
    server.send_message(sid, b"three")
    server.send_message(sid, b"x" * 100_000, batch=True)  # large: never batched
    link.peer.h2.increment_flow_control_window(1 << 20)
    link.peer.h2.increment_flow_control_window(1 << 20, stream_id=sid)
    link.pump()
    assert link.peer.data(sid) == b"".join(
        grpc_frame(m) for m in (b"one", b"two", b"three", b"x" * 100_000)
    )


def test_server_connection_batched_messages_of_a_reset_stream_are_dropped() -> None:
    link = server_link()
    sid = open_stream(link)
    other = open_stream(link)
    server = link.ours
    assert isinstance(server, ServerConnection)
    server.send_message(sid, b"lost", batch=True)
    link.peer.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    server.send_message(other, b"kept", batch=True)
    link.pump()  # must not raise on the reset stream's batch
    assert link.peer.data(sid) == b""
    assert link.peer.data(other) == grpc_frame(b"kept")
    assert server.pending(sid) == 0


# -- header blocks larger than a frame (CONTINUATION) -------------------------------------------


def _big_value(size: int) -> bytes:
    # Varied printable text: Huffman coding keeps it near its length.
    return bytes(33 + (i * 7919) % 94 for i in range(size)).replace(b",", b";")


def test_server_connection_header_blocks_over_16_kib_both_ways() -> None:
    link = server_link(Settings(max_header_list_size=128 << 10))
    value = _big_value(40_000)
    link.peer.h2.send_headers(1, request_headers(x_big=value))
    link.peer.h2.send_data(1, grpc_frame(b"q"), end_stream=True)
    wire = link.peer.h2.data_to_send()
    assert [type(f).__name__ for f in parse_frames(wire)].count("ContinuationFrame") >= 2
    events = link.ours.receive_data(wire)
    link.pump()
    [request] = [e for e in events if isinstance(e, RequestReceived)]
    assert dict(request.metadata)["x-big"] == value.decode()
    server = link.ours
    assert isinstance(server, ServerConnection)
    server.send_headers(1, [("x-big", value.decode())])
    server.send_message(1, b"r")
    server.send_trailers(1, Status.OK, metadata=[("x-big-trailer", value.decode())])
    link.pump()
    frames = parse_frames(b"".join(link.wire_to_peer))
    assert [type(f).__name__ for f in frames].count("ContinuationFrame") >= 4
    assert link.peer.headers(1)[b"x-big"] == value
    assert link.peer.trailers(1)[b"x-big-trailer"] == value
    assert link.peer.trailers(1)[b"grpc-status"] == b"0"


def test_server_connection_enforces_its_advertised_header_list_size() -> None:
    link = server_link(Settings(max_header_list_size=16 << 10))
    link.peer.h2.send_headers(1, request_headers(x_big=_big_value(20_000)))
    with pytest.raises(h2.exceptions.ProtocolError, match="header"):
        link.ours.receive_data(link.peer.h2.data_to_send())


def test_server_connection_processes_a_large_batch_in_passes() -> None:
    from prism.grpc.wire.server_conn import FRAMES_PER_PASS

    link = server_link()
    peer = link.peer.h2
    for _ in range(FRAMES_PER_PASS + 50):
        peer.increment_flow_control_window(1)  # frames no budget limits
    server = link.ours
    assert isinstance(server, ServerConnection)
    server.receive_data(peer.data_to_send())
    assert server.input_pending  # the rest waits for the next pass
    server.receive_data(b"")
    assert not server.input_pending
