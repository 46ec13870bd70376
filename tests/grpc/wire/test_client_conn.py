"""ClientConnection driven synchronously by a raw h2 server (see h2peer.py)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame
import pytest
from h2peer import Link, client_link, grpc_frame, parse_frames

from prism.grpc.wire import compression as codec
from prism.grpc.wire.client_conn import ClientConnection
from prism.grpc.wire.events import (
    GoAwayReceived,
    MessageReceived,
    ResponseEnded,
    ResponseHeadersReceived,
    StreamAborted,
)
from prism.grpc.wire.h2conn import Settings
from prism.grpc.wire.metadata import MetadataError
from prism.grpc.wire.status import Status

OK_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def ours(link: Link) -> ClientConnection:
    assert isinstance(link.ours, ClientConnection)
    return link.ours


def start(link: Link, method: str = "/pkg.Svc/Method", **kwargs: object) -> int:
    sid = ours(link).start_request(method, **kwargs)  # type: ignore[arg-type]
    link.pump()
    return sid


def respond(link: Link, sid: int, headers: list[tuple[bytes, bytes]], *, end: bool = False) -> None:
    link.peer.h2.send_headers(sid, headers, end_stream=end)
    link.pump()


def ended(link: Link, sid: int) -> ResponseEnded:
    [event] = [e for e in link.of(ResponseEnded) if e.stream_id == sid]
    return event


# -- requests -----------------------------------------------------------------------------------


def test_client_connection_request_headers() -> None:
    link = client_link()
    sid = start(
        link,
        "/pkg.Svc/Echo",
        metadata=[("x-trace", "abc"), ("blob-bin", b"\x00\x01\x02")],
        timeout=0.201,
    )
    headers = link.peer.headers(sid)
    assert headers[b":method"] == b"POST"
    assert headers[b":scheme"] == b"http"
    assert headers[b":path"] == b"/pkg.Svc/Echo"
    assert headers[b":authority"] == b"example.test"
    assert headers[b"content-type"] == b"application/grpc"
    assert headers[b"te"] == b"trailers"
    assert headers[b"grpc-timeout"] == b"201000u"
    assert headers[b"x-trace"] == b"abc"
    assert headers[b"blob-bin"] == b"AAEC"


def test_client_connection_invalid_metadata_is_refused_before_sending() -> None:
    link = client_link()
    with pytest.raises(MetadataError):
        ours(link).start_request("/pkg.Svc/M", [("Bad Key", "v")])


def test_client_connection_messages_and_half_close() -> None:
    link = client_link()
    sid = start(link)
    ours(link).send_message(sid, b"one")
    ours(link).send_message(sid, b"x" * 40_000, end=True)
    link.pump()
    assert link.peer.data(sid) == grpc_frame(b"one") + grpc_frame(b"x" * 40_000)
    assert link.peer.of(h2.events.StreamEnded, sid)


# -- responses ----------------------------------------------------------------------------------


def test_client_connection_headers_messages_trailers() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"x-initial", b"1"), (b"raw-bin", b"/wA")])
    link.peer.h2.send_data(sid, grpc_frame(b"a") + grpc_frame(b"bc"))
    link.pump()
    respond(link, sid, [(b"grpc-status", b"0"), (b"x-final", b"2")], end=True)
    assert link.of(ResponseHeadersReceived) == [
        ResponseHeadersReceived(sid, [("x-initial", "1"), ("raw-bin", b"\xff\x00")])
    ]
    assert [e.message for e in link.of(MessageReceived)] == [b"a", b"bc"]
    assert ended(link, sid) == ResponseEnded(sid, Status.OK, "", [("x-final", "2")])


def test_client_connection_trailers_only_response() -> None:
    link = client_link()
    sid = start(link)
    respond(
        link,
        sid,
        [*OK_HEADERS, (b"grpc-status", b"5"), (b"grpc-message", b"n%C3%B6 key"), (b"x-a", b"b")],
        end=True,
    )
    assert link.of(ResponseHeadersReceived) == []
    assert ended(link, sid) == ResponseEnded(sid, Status.NOT_FOUND, "nö key", [("x-a", "b")])


@pytest.mark.parametrize(
    ("http_status", "grpc_status"),
    [
        (b"400", Status.INTERNAL),
        (b"401", Status.UNAUTHENTICATED),
        (b"403", Status.PERMISSION_DENIED),
        (b"404", Status.UNIMPLEMENTED),
        (b"429", Status.UNAVAILABLE),
        (b"502", Status.UNAVAILABLE),
        (b"503", Status.UNAVAILABLE),
        (b"504", Status.UNAVAILABLE),
        (b"500", Status.UNKNOWN),
    ],
)
def test_client_connection_maps_http_status(http_status: bytes, grpc_status: Status) -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [(b":status", http_status), (b"content-type", b"text/html")], end=True)
    event = ended(link, sid)
    assert event.status is grpc_status
    assert http_status.decode() in event.message


def test_client_connection_http_error_ignores_a_grpc_status_header() -> None:
    # The HTTP status wins: a proxy's 503 page is UNAVAILABLE whatever else it says.
    link = client_link()
    sid = start(link)
    respond(link, sid, [(b":status", b"503"), (b"grpc-status", b"0")], end=True)
    assert ended(link, sid).status is Status.UNAVAILABLE


def test_client_connection_non_grpc_content_type_is_internal() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [(b":status", b"200"), (b"content-type", b"text/html")])
    event = ended(link, sid)
    assert event.status is Status.INTERNAL
    assert "text/html" in event.message
    # The client stops the stream it cannot use.
    assert link.peer.of(h2.events.StreamReset, sid)


def test_client_connection_end_without_grpc_status_is_internal() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, OK_HEADERS)
    link.peer.h2.send_data(sid, grpc_frame(b"a"), end_stream=True)
    link.pump()
    assert ended(link, sid).status is Status.INTERNAL


def test_client_connection_ok_ending_mid_message_is_internal() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, OK_HEADERS)
    link.peer.h2.send_data(sid, grpc_frame(b"abcdef")[:-3])
    link.pump()
    respond(link, sid, [(b"grpc-status", b"0")], end=True)
    assert ended(link, sid).status is Status.INTERNAL


def test_client_connection_unknown_grpc_status_is_unknown() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"grpc-status", b"99")], end=True)
    assert ended(link, sid).status is Status.UNKNOWN


def test_client_connection_oversize_response_is_resource_exhausted() -> None:
    link = client_link(max_receive_message_size=100)
    sid = start(link)
    respond(link, sid, OK_HEADERS)
    link.peer.h2.send_data(sid, grpc_frame(b"", length=101))
    link.pump()
    event = ended(link, sid)
    assert event.status is Status.RESOURCE_EXHAUSTED
    [reset] = link.peer.of(h2.events.StreamReset, sid)
    assert reset.error_code == h2.errors.ErrorCodes.CANCEL


def test_client_connection_compressed_flag_without_grpc_encoding_is_internal() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, OK_HEADERS)
    link.peer.h2.send_data(sid, grpc_frame(b"zz", flag=1))
    link.pump()
    assert ended(link, sid).status is Status.INTERNAL


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (h2.errors.ErrorCodes.NO_ERROR, Status.INTERNAL),
        (h2.errors.ErrorCodes.PROTOCOL_ERROR, Status.INTERNAL),
        (h2.errors.ErrorCodes.INTERNAL_ERROR, Status.INTERNAL),
        (h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, Status.INTERNAL),
        (h2.errors.ErrorCodes.REFUSED_STREAM, Status.UNAVAILABLE),
        (h2.errors.ErrorCodes.CANCEL, Status.CANCELLED),
        (h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, Status.RESOURCE_EXHAUSTED),
        (h2.errors.ErrorCodes.INADEQUATE_SECURITY, Status.PERMISSION_DENIED),
    ],
)
def test_client_connection_maps_rst_stream_codes(code: int, status: Status) -> None:
    link = client_link()
    sid = start(link)
    link.peer.h2.reset_stream(sid, code)
    link.pump()
    [aborted] = link.of(StreamAborted)
    assert aborted.stream_id == sid
    assert aborted.error.status is status


def unvalidated(link: Link) -> Link:
    """Let the raw server send header blocks h2 would refuse to send."""
    link.peer.h2.config.validate_outbound_headers = False
    link.peer.h2.config.normalize_outbound_headers = False
    return link


def test_client_connection_status_message_with_surrounding_spaces() -> None:
    # grpcio sends grpc-message "missing " unencoded; it used to cost the whole connection
    # (h2's inbound validation raised ProtocolError).
    link = unvalidated(client_link())
    sid = start(link)
    respond(
        link, sid, [*OK_HEADERS, (b"grpc-status", b"5"), (b"grpc-message", b"missing ")], end=True
    )
    event = ended(link, sid)
    assert (event.status, event.message) == (Status.NOT_FOUND, "missing ")
    assert not ours(link).closed
    assert ours(link).can_open_stream()


def test_client_connection_malformed_header_name_fails_only_its_call() -> None:
    link = unvalidated(client_link())
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"X-Upper", b"v"), (b"grpc-status", b"0")], end=True)
    event = ended(link, sid)
    assert event.status is Status.INTERNAL
    assert "malformed header name" in event.message
    assert not ours(link).closed
    assert ours(link).can_open_stream()


def test_client_connection_response_without_status_is_an_error() -> None:
    link = unvalidated(client_link())
    sid = start(link)
    respond(link, sid, [(b"content-type", b"application/grpc")])
    assert ended(link, sid).status is Status.UNKNOWN


def test_client_connection_reset_after_complete_response_keeps_the_status() -> None:
    # A server that answered before we half-closed resets the stream with NO_ERROR (grpc-go
    # and prism do); the call's outcome is the status it already received.
    link = client_link()
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"grpc-status", b"8"), (b"grpc-message", b"big")], end=True)
    link.peer.h2.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
    link.pump()
    assert ended(link, sid).status is Status.RESOURCE_EXHAUSTED
    assert link.of(StreamAborted) == []


def test_client_connection_finish_closes_a_request_side_left_open() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"grpc-status", b"0")], end=True)
    ours(link).finish(sid)
    link.pump()
    [reset] = link.peer.of(h2.events.StreamReset, sid)
    assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert ours(link)._h2.open_outbound_streams == 0


def test_client_connection_cancel_sends_rst_stream_cancel() -> None:
    link = client_link()
    sid = start(link)
    ours(link).cancel(sid)
    link.pump()
    [reset] = link.peer.of(h2.events.StreamReset, sid)
    assert reset.error_code == h2.errors.ErrorCodes.CANCEL
    assert ours(link).active_streams == 0


# -- flow control -------------------------------------------------------------------------------


def test_client_connection_queues_behind_a_server_that_never_sends_window_update() -> None:
    link = client_link()
    sid = start(link)
    ours(link).send_message(sid, b"r" * (1 << 20))
    link.pump()
    assert len(link.peer.data(sid)) == 65535
    assert ours(link).pending(sid) == (1 << 20) + 5 - 65535
    link.peer.h2.increment_flow_control_window(1 << 21)
    link.peer.h2.increment_flow_control_window(1 << 21, stream_id=sid)
    link.pump()
    assert ours(link).pending(sid) == 0
    assert link.peer.data(sid) == grpc_frame(b"r" * (1 << 20))


def test_client_connection_acknowledges_received_bytes_only_as_they_are_consumed() -> None:
    window = 65535
    link = client_link(Settings(initial_window_size=window, connection_window_size=window))
    sid = start(link)
    respond(link, sid, OK_HEADERS)
    message = grpc_frame(b"p" * 16000)
    sent = 0
    while link.peer.h2.local_flow_control_window(sid) >= len(message):
        link.peer.h2.send_data(sid, message)
        link.pump()
        sent += 1
    assert len(link.of(MessageReceived)) == sent
    # Nothing consumed, nothing acknowledged: the server stops within one window.
    assert window - len(message) < sent * len(message) <= window
    stalled = link.peer.h2.local_flow_control_window(sid)
    ours(link).consumed(sid, sent * len(message))
    link.pump()
    assert link.peer.h2.local_flow_control_window(sid) > stalled + len(message)


# -- connection-level ---------------------------------------------------------------------------


def test_client_connection_goaway_mid_stream_lets_the_stream_finish() -> None:
    link = client_link()
    first = start(link)
    second = start(link)
    respond(link, first, OK_HEADERS)
    # Graceful GOAWAY: stream `first` may finish, `second` was never processed.
    link.peer.inject(hyperframe.frame.GoAwayFrame(0, last_stream_id=first, error_code=0))
    link.pump()
    assert link.of(GoAwayReceived) == [GoAwayReceived(first, 0)]
    [aborted] = link.of(StreamAborted)
    assert aborted.stream_id == second
    assert aborted.error.status is Status.UNAVAILABLE
    assert not ours(link).can_open_stream()
    # DATA and trailers after the GOAWAY are still processed (plain h2 would refuse them).
    link.peer.h2.send_data(first, grpc_frame(b"late"))
    link.pump()
    respond(link, first, [(b"grpc-status", b"0")], end=True)
    assert [e.message for e in link.of(MessageReceived)] == [b"late"]
    assert ended(link, first).status is Status.OK
    # And we can still send on the surviving stream.
    ours(link).send_message(first, b"tail", end=True)
    link.pump()


def test_client_connection_can_open_stream_respects_max_concurrent_streams() -> None:
    link = client_link()
    link.peer.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    link.pump()
    first = start(link)
    start(link)
    assert not ours(link).can_open_stream()
    ours(link).cancel(first)
    link.pump()
    assert ours(link).can_open_stream()


def test_client_connection_close_sends_goaway() -> None:
    link = client_link()
    ours(link).close()
    frames = parse_frames(ours(link).data_to_send())
    assert [type(f) for f in frames] == [hyperframe.frame.GoAwayFrame]
    assert not ours(link).can_open_stream()


def test_client_connection_trailers_only_without_content_type_is_accepted() -> None:
    # grpclib answers unknown methods like this; grpc C-core clients accept it.
    link = client_link()
    sid = start(link)
    respond(
        link,
        sid,
        [(b":status", b"200"), (b"grpc-status", b"12"), (b"grpc-message", b"Method not found")],
        end=True,
    )
    assert ended(link, sid) == ResponseEnded(sid, Status.UNIMPLEMENTED, "Method not found", [])


# -- compression --------------------------------------------------------------------------------


def test_client_connection_says_what_it_accepts_and_sends_no_encoding_by_default() -> None:
    link = client_link()
    sid = start(link)
    ours(link).send_message(sid, b"abc", end=True)
    link.pump()
    headers = link.peer.headers(sid)
    assert headers[b"grpc-accept-encoding"] == b"gzip,deflate,identity"
    assert b"grpc-encoding" not in headers
    assert link.peer.data(sid) == grpc_frame(b"abc")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_client_connection_compresses_requests(encoding: str) -> None:
    link = client_link()
    sid = start(link, compression=encoding)
    body = b"request " * 400
    ours(link).send_message(sid, body)
    ours(link).send_message(sid, b"clear", compress=False, end=True)
    link.pump()
    assert link.peer.headers(sid)[b"grpc-encoding"] == encoding.encode()
    data = link.peer.data(sid)
    length = int.from_bytes(data[1:5], "big")
    assert data[0] == 1
    assert codec.decompress(encoding, data[5 : 5 + length], 1 << 20) == body
    assert data[5 + length :] == grpc_frame(b"clear")


def test_client_connection_identity_compression_sends_no_encoding() -> None:
    link = client_link()
    sid = start(link, compression="identity")
    ours(link).send_message(sid, b"abc", end=True)
    link.pump()
    assert b"grpc-encoding" not in link.peer.headers(sid)
    assert link.peer.data(sid) == grpc_frame(b"abc")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_client_connection_inflates_compressed_responses(encoding: str) -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"grpc-encoding", encoding.encode())])
    body = b"response " * 1000
    link.peer.h2.send_data(sid, grpc_frame(codec.compress(encoding, body), flag=1))
    link.peer.h2.send_data(sid, grpc_frame(b"plain"))
    link.pump()
    assert [e.message for e in link.of(MessageReceived)] == [body, b"plain"]


def test_client_connection_unsupported_response_encoding_is_internal() -> None:
    link = client_link()
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"grpc-encoding", b"snappy")])
    event = ended(link, sid)
    assert event.status is Status.INTERNAL
    assert "'snappy'" in event.message
    assert "gzip, deflate, identity" in event.message


def test_client_connection_response_inflating_past_the_limit_is_resource_exhausted() -> None:
    link = client_link(max_receive_message_size=1 << 16)
    sid = start(link)
    respond(link, sid, [*OK_HEADERS, (b"grpc-encoding", b"gzip")])
    link.peer.h2.send_data(sid, grpc_frame(codec.compress("gzip", bytes(1 << 20)), flag=1))
    link.pump()
    assert ended(link, sid).status is Status.RESOURCE_EXHAUSTED
    assert link.of(MessageReceived) == []


def test_client_connection_unknown_request_compression_is_refused_before_sending() -> None:
    link = client_link()
    with pytest.raises(ValueError, match="br"):
        ours(link).start_request("/pkg.Svc/M", compression="br")


# -- header blocks larger than a frame (CONTINUATION) -------------------------------------------


def test_client_connection_header_blocks_over_16_kib_both_ways() -> None:
    link = client_link(Settings(max_header_list_size=128 << 10))
    value = "".join(chr(33 + (i * 7919) % 94) for i in range(40_000)).replace(",", ";")
    before = len(link.wire_to_peer)  # after the preface
    sid = start(link, metadata=[("x-big", value)])
    frames = parse_frames(b"".join(link.wire_to_peer[before:]))
    assert [type(f).__name__ for f in frames].count("ContinuationFrame") >= 2
    assert link.peer.headers(sid)[b"x-big"] == value.encode()
    respond(link, sid, [*OK_HEADERS, (b"x-big", value.encode())])
    respond(link, sid, [(b"grpc-status", b"0"), (b"x-big-trailer", value.encode())], end=True)
    assert link.of(ResponseHeadersReceived) == [ResponseHeadersReceived(sid, [("x-big", value)])]
    assert ended(link, sid) == ResponseEnded(sid, Status.OK, "", [("x-big-trailer", value)])


# -- the fast path for DATA (fast_data) ---------------------------------------------------------


def _describe_events(events: list[object]) -> list[tuple[object, ...]]:
    described: list[tuple[object, ...]] = []
    for event in events:
        if isinstance(event, MessageReceived):
            described.append(("message", event.stream_id, bytes(event.message)))
        else:
            described.append((type(event).__name__, getattr(event, "stream_id", None)))
    return described


@pytest.mark.parametrize("cut", [1, 7, 4096, 16_393, 50_000, 1 << 20])
@pytest.mark.parametrize("consume", [True, False])
def test_client_connection_fast_data_matches_h2(cut: int, consume: bool) -> None:
    # Two client connections, one taking plain DATA frames itself and one giving every frame
    # to h2, get the same server bytes in reads of `cut` bytes: the same events, the same
    # acknowledgements (WINDOW_UPDATEs) back, whatever the messages' sizes and the reads.
    fast = ClientConnection(authority="example.test", max_receive_message_size=1 << 24)
    slow = ClientConnection(authority="example.test", max_receive_message_size=1 << 24)
    slow.fast_data = False
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    for conn in (fast, slow):
        conn.initiate_connection()
        sid = conn.start_request("/pkg.Svc/Stream")
    preface = fast.data_to_send()
    assert preface == slow.data_to_send()
    server.receive_data(preface)
    server.send_headers(sid, OK_HEADERS)
    sizes = [0, 10, 16_000, 40_000, 200_000, 3, 70_000]
    body = b"".join(grpc_frame(bytes([i]) * n) for i, n in enumerate(sizes))
    for start in range(0, len(body), 16_384):
        server.send_data(sid, body[start : start + 16_384])
    server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    wire = server.data_to_send()
    seen: list[list[tuple[object, ...]]] = [[], []]
    for pos in range(0, len(wire), cut):
        read = wire[pos : pos + cut]
        outputs = []
        for i, conn in enumerate((fast, slow)):
            events = conn.receive_data(read)
            seen[i] += _describe_events(events)
            if consume:
                for event in events:
                    if isinstance(event, MessageReceived):
                        conn.consumed(sid, len(event.message) + 5)
            outputs.append(conn.data_to_send())
        assert outputs[0] == outputs[1]
    assert seen[0] == seen[1]
    assert [e[2] for e in seen[0] if e[0] == "message"] == [
        bytes([i]) * n for i, n in enumerate(sizes)
    ]
    assert seen[0][-1] == ("ResponseEnded", sid)
