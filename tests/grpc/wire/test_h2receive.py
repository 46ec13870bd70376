"""prism's receive fast paths (request/response HEADERS, DATA) against h2's own code.

The same bytes, produced by a plain h2 peer, go into prism's h2 connection (``new_h2``) and
into an unmodified ``h2.connection.H2Connection`` with the same configuration; both must
report the same events, raise the same errors and leave their streams in the same state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2peer import request_headers
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.grpc.wire.h2conn import h2_config, new_h2
from prism.grpc.wire.h2receive import CompressionError

REQUEST = request_headers()
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


def _describe(value: Any) -> Any:
    if isinstance(value, h2.events.Event):
        if isinstance(value, h2.events.StreamEnded | h2.events.PriorityUpdated):
            return (type(value).__name__, getattr(value, "stream_id", None))
        fields = vars(value) if not dataclasses.is_dataclass(value) else dataclasses.asdict(value)
        fields = {k: getattr(value, k) for k in fields}
        return (type(value).__name__, {k: _describe(v) for k, v in sorted(fields.items())})
    if isinstance(value, list):
        return [_describe(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_describe(v) for v in value)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if hasattr(value, "new_value"):  # h2.settings.ChangedSetting
        return (value.setting, value.original_value, value.new_value)
    return value


class _Pair:
    """Our connection and h2's, fed the same bytes; their reports must match."""

    def __init__(self, client_side: bool) -> None:
        self.ours = new_h2(client_side)
        self.theirs = h2.connection.H2Connection(h2_config(client_side))
        for conn in (self.ours, self.theirs):
            conn.initiate_connection()
        #: What both send first (the peer needs it once).
        self.preface = self.theirs.data_to_send()
        self.ours.clear_outbound_data_buffer()

    def feed(self, data: bytes) -> list[Any]:
        """The events both reported; raises AssertionError when they differ."""
        outcome = self.outcome(data)
        assert outcome[0] == "events", outcome
        return list(outcome[1])

    def outcome(self, data: bytes) -> tuple[str, Any]:
        """``("events", [...])`` or ``("error", exception class name)``, the same for both."""
        outcomes: list[tuple[str, Any]] = []
        for conn in (self.ours, self.theirs):
            try:
                outcomes.append(("events", _describe(conn.receive_data(data))))
            except CompressionError as exc:
                # h2 calls an undecodable header block a ProtocolError; we give it its own
                # class for its GOAWAY code (COMPRESSION_ERROR, RFC 9113 §4.3).
                outcomes.append(("error", "ProtocolError" if "decoding" in str(exc) else "?"))
            except h2.exceptions.ProtocolError as exc:
                outcomes.append(("error", type(exc).__name__))
        assert outcomes[0] == outcomes[1]
        # After a connection error nothing more happens on either connection. (Our frame
        # reader joins consecutive DATA frames, so a window overrun is found a frame earlier.)
        if outcomes[0][0] == "events":
            self.check_state()
        return outcomes[0]

    def check_state(self) -> None:
        ours, theirs = self.ours, self.theirs
        assert ours.state_machine.state == theirs.state_machine.state
        # Closed streams are forgotten at different times (prism prunes lazily, see h2streams).
        live = sorted(sid for sid, stream in ours.streams.items() if not stream.closed)
        assert live == sorted(sid for sid, stream in theirs.streams.items() if not stream.closed)
        assert ours.highest_inbound_stream_id == theirs.highest_inbound_stream_id
        assert (
            ours._inbound_flow_control_window_manager.current_window_size
            == theirs._inbound_flow_control_window_manager.current_window_size
        )
        for sid in sorted(ours.streams.keys() & theirs.streams.keys()):
            stream, other = ours.streams[sid], theirs.streams[sid]
            for attr in ("state", "client", "headers_received", "trailers_received"):
                assert getattr(stream.state_machine, attr) == getattr(other.state_machine, attr)
            assert stream.state_machine.stream_closed_by == other.state_machine.stream_closed_by
            assert (
                stream._inbound_window_manager.current_window_size
                == other._inbound_window_manager.current_window_size
            )
            assert stream._actual_content_length == other._actual_content_length


def _headers_frame(sid: int, block: bytes) -> bytes:
    """A HEADERS frame with END_HEADERS and nothing else, built by hand."""
    return len(block).to_bytes(3, "big") + b"\x01\x04" + sid.to_bytes(4, "big") + block


def _peer(client_side: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2_config(client_side))
    peer.initiate_connection()
    return peer


def _server_pair() -> tuple[_Pair, h2.connection.H2Connection]:
    pair, client = _Pair(client_side=False), _peer(client_side=True)
    pair.feed(client.data_to_send())
    return pair, client


def _client_pair() -> tuple[_Pair, h2.connection.H2Connection]:
    pair, server = _Pair(client_side=True), _peer(client_side=False)
    server.receive_data(pair.preface)
    pair.feed(server.data_to_send())
    return pair, server


def _open_request(pair: _Pair, server: h2.connection.H2Connection, sid: int, end: bool) -> None:
    """The request our client side sends (same on both), as the server peer sees it."""
    for conn in (pair.ours, pair.theirs):
        conn.send_headers(sid, REQUEST, end_stream=end)
    server.receive_data(pair.theirs.data_to_send())
    pair.ours.clear_outbound_data_buffer()


def test_receive_unary_request_matches_h2() -> None:
    pair, client = _server_pair()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"\0\0\0\0\3abc", end_stream=True)
    events = pair.feed(client.data_to_send())
    assert [e[0] for e in events] == ["RequestReceived", "DataReceived", "StreamEnded"]


def test_receive_request_ending_with_its_headers_matches_h2() -> None:
    pair, client = _server_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    events = pair.feed(client.data_to_send())
    assert [e[0] for e in events] == ["RequestReceived", "StreamEnded"]


def test_receive_request_with_content_length_matches_h2() -> None:
    pair, client = _server_pair()
    client.send_headers(1, [*REQUEST, (b"content-length", b"3")])
    client.send_data(1, b"abcd", end_stream=True)
    # h2 refuses the body length (a connection error): so must we.
    assert pair.outcome(client.data_to_send()) == ("error", "InvalidBodyLengthError")


@pytest.mark.parametrize("end_request", [False, True])
def test_receive_response_and_trailers_match_h2(end_request: bool) -> None:
    pair, server = _client_pair()
    _open_request(pair, server, 1, end=end_request)
    server.send_headers(1, RESPONSE)
    server.send_data(1, b"\0\0\0\0\2ok")
    server.send_headers(1, TRAILERS, end_stream=True)
    events = pair.feed(server.data_to_send())
    kinds = [e[0] for e in events]
    assert kinds == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]


def test_receive_trailers_only_response_matches_h2() -> None:
    pair, server = _client_pair()
    _open_request(pair, server, 1, end=True)
    server.send_headers(1, [*RESPONSE, (b"grpc-status", b"5")], end_stream=True)
    events = pair.feed(server.data_to_send())
    assert [e[0] for e in events] == ["ResponseReceived", "StreamEnded"]


def test_receive_informational_response_matches_h2() -> None:
    pair, server = _client_pair()
    _open_request(pair, server, 1, end=True)
    server.send_headers(1, [(b":status", b"100")])
    server.send_headers(1, RESPONSE)
    events = pair.feed(server.data_to_send())
    assert [e[0] for e in events] == ["InformationalResponseReceived", "ResponseReceived"]


def test_receive_request_with_a_status_pseudo_header_fails_like_h2() -> None:
    pair, client = _server_pair()
    # Built by hand: h2 refuses to send informational headers on a request.
    block = client.encoder.encode([*REQUEST[:1], (b":status", b"100"), *REQUEST[1:]])
    assert pair.outcome(_headers_frame(1, block)) == ("error", "ProtocolError")


def test_receive_trailers_without_end_stream_fails_like_h2() -> None:
    pair, server = _client_pair()
    _open_request(pair, server, 1, end=True)
    server.send_headers(1, RESPONSE)
    pair.feed(server.data_to_send())
    # A second HEADERS without END_STREAM, built by hand (h2 refuses to send it).
    block = server.encoder.encode(TRAILERS)
    assert pair.outcome(_headers_frame(1, block)) == ("error", "ProtocolError")


def test_receive_data_beyond_the_window_fails_like_h2() -> None:
    pair, client = _server_pair()
    client.send_headers(1, REQUEST)
    pair.feed(client.data_to_send())
    # 70,000 bytes against the default 65,535-byte windows, in frames h2 would not send.
    frames = b""
    for _ in range(5):
        chunk = b"x" * 14000
        frames += len(chunk).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + chunk
    assert pair.outcome(frames) == ("error", "FlowControlError")


_action = st.one_of(
    st.tuples(st.just("headers"), st.sampled_from([1, 3, 5]), st.booleans()),
    st.tuples(st.just("data"), st.sampled_from([1, 3, 5]), st.booleans(), st.integers(0, 40)),
    st.tuples(st.just("reset"), st.sampled_from([1, 3, 5])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_action, max_size=12))
def test_server_side_receive_matches_h2_for_any_client_sequence(actions: list[Any]) -> None:
    pair, client = _server_pair()
    for action in actions:
        try:
            if action[0] == "headers":
                client.send_headers(action[1], REQUEST, end_stream=action[2])
            elif action[0] == "data":
                client.send_data(action[1], b"d" * action[3], end_stream=action[2])
            else:
                client.reset_stream(action[1])
        except (h2.exceptions.ProtocolError, KeyError):
            continue  # h2 would not send this; skip it
        if pair.outcome(client.data_to_send())[0] == "error":
            return


@settings(max_examples=200, deadline=None)
@given(st.lists(_action, max_size=12))
def test_client_side_receive_matches_h2_for_any_server_sequence(actions: list[Any]) -> None:
    pair, server = _client_pair()
    for sid in (1, 3, 5):
        _open_request(pair, server, sid, end=sid == 3)
    sent_headers: set[int] = set()
    for action in actions:
        try:
            if action[0] == "headers":
                sid = action[1]
                block = TRAILERS if sid in sent_headers else RESPONSE
                server.send_headers(sid, block, end_stream=action[2])
                sent_headers.add(sid)
            elif action[0] == "data":
                server.send_data(action[1], b"d" * action[3], end_stream=action[2])
            else:
                server.reset_stream(action[1])
        except (h2.exceptions.ProtocolError, KeyError):
            continue
        if pair.outcome(server.data_to_send())[0] == "error":
            return
