"""ServerConnection's DATA fast path (``take_data_frames``) against the path through h2.

Two server connections, one with the fast path and one without (``fast_data = False``: every
frame goes through h2's receive loop and prism's h2 fast paths, which test_h2receive.py checks
against unmodified h2), are fed the same bytes, cut into reads at arbitrary points. They must
report the same messages and events, raise the same errors, write the same bytes (window
updates, resets) and leave h2 in the same state.
"""

from __future__ import annotations

import itertools
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2peer import grpc_frame, request_headers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prism.grpc.wire.events import MessagesReceived
from prism.grpc.wire.h2conn import Settings
from prism.grpc.wire.server_conn import FRAMES_PER_PASS, ServerConnection

LIMIT = 1 << 16
SIDS = (1, 3, 5)


def _describe(events: list[Any]) -> list[Any]:
    """Events with messages flattened: how many MessagesReceived carry them does not count."""
    described: list[Any] = []
    for event in events:
        if isinstance(event, MessagesReceived):
            described += [("message", event.stream_id, m) for m in event.messages]
        elif hasattr(event, "error"):
            described.append((type(event).__name__, event.stream_id, event.error.status))
        else:
            described.append((type(event).__name__, getattr(event, "stream_id", None)))
    return described


class _Twin:
    def __init__(self, server_settings: Settings, frames_per_pass: int = FRAMES_PER_PASS) -> None:
        self.fast = ServerConnection(server_settings, max_receive_message_size=LIMIT)
        self.slow = ServerConnection(server_settings, max_receive_message_size=LIMIT)
        self.slow.fast_data = False
        for conn in (self.fast, self.slow):
            conn.frames_per_pass = frames_per_pass
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.peer = h2.connection.H2Connection(config)
        self.peer.initiate_connection()
        self.failed = False
        for conn in (self.fast, self.slow):
            conn.initiate_connection()
        self.deliver(self.peer.data_to_send(), [])

    def both(self) -> tuple[ServerConnection, ServerConnection]:
        return self.fast, self.slow

    def deliver(self, data: bytes, cuts: list[int], consume: bool = True) -> None:
        """Feed ``data`` to both, cut at ``cuts``; compare; give our answer to the peer."""
        bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
        for start, end in itertools.pairwise(bounds):
            outcomes = [self._receive(conn, data[start:end], consume) for conn in self.both()]
            assert outcomes[0] == outcomes[1]
            if outcomes[0][0] == "error":
                self.failed = True
                return
            self._check_state()
            if outcomes[0][2]:
                try:
                    self.peer.receive_data(outcomes[0][2])
                except h2.exceptions.ProtocolError:
                    self.failed = True
                    return

    @staticmethod
    def _receive(conn: ServerConnection, data: bytes, consume: bool) -> tuple[Any, ...]:
        try:
            events = conn.receive_data(data)
            while conn.input_pending:
                events += conn.receive_data(b"")
        except h2.exceptions.ProtocolError as exc:
            return ("error", type(exc).__name__, conn.data_to_send())
        if consume:
            for event in events:
                if isinstance(event, MessagesReceived):
                    for message in event.messages:
                        conn.consumed(event.stream_id, len(message) + 5)
        return ("events", _describe(events), conn.data_to_send())

    def _check_state(self) -> None:
        ours, theirs = self.fast._h2, self.slow._h2
        assert ours.state_machine.state == theirs.state_machine.state
        windows = [c._inbound_flow_control_window_manager for c in (ours, theirs)]
        assert windows[0].current_window_size == windows[1].current_window_size
        assert windows[0]._bytes_processed == windows[1]._bytes_processed
        assert ours.streams.keys() == theirs.streams.keys()
        for sid, stream in ours.streams.items():
            other = theirs.streams[sid]
            assert stream.state_machine.state == other.state_machine.state
            assert stream._actual_content_length == other._actual_content_length
            mine, its = stream._inbound_window_manager, other._inbound_window_manager
            assert mine.current_window_size == its.current_window_size
            assert mine._bytes_processed == its._bytes_processed
        assert self.fast._held == self.slow._held
        assert self.fast._queued == self.slow._queued


_messages = st.lists(st.integers(0, 3000), min_size=1, max_size=6)
_action = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(SIDS), st.booleans()),
    st.tuples(
        st.just("data"), st.sampled_from(SIDS), _messages, st.integers(1, 5000), st.booleans()
    ),
    st.tuples(st.just("reset"), st.sampled_from(SIDS)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("padded"), st.sampled_from(SIDS), st.integers(0, 200)),
)


@settings(max_examples=300, deadline=None)
# A broken message aborts the stream in a read that also carries the client's END_STREAM: the
# fast path reset the stream (RST_STREAM NO_ERROR, then STREAM_CLOSED for the frames behind
# it) where h2's path, seeing the whole read first, did not.
@example(
    actions=[
        ("open", 5, False),
        ("data", 5, [896, 2224, 2328, 850, 2225], 1, False),
        ("ping",),
        ("data", 5, [0, 1797], 523, True),
    ],
    cuts=[],
    consume=True,
    window=8192,
    budget=FRAMES_PER_PASS,
)
# A pass of the frame budget ended one frame early on the fast path: completing a frame begun
# in an earlier read, h2's reader counted its look at the empty rest as a frame. Where a pass
# ends decides which bytes are acknowledged at its end (the beginning of an incomplete message
# at once, a complete one's when it is consumed), so the two paths sent different
# WINDOW_UPDATEs. Small budgets put the end of a pass everywhere.
@example(
    actions=[("open", 1, False), ("data", 1, [0], 1, False)],
    cuts=[9],
    consume=False,
    window=65535,
    budget=2,
)
@given(
    actions=st.lists(_action, max_size=14),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=6),
    consume=st.booleans(),
    window=st.sampled_from([65535, 8192]),
    budget=st.sampled_from([FRAMES_PER_PASS, FRAMES_PER_PASS, 1, 2, 3, 5]),
)
def test_server_connection_fast_data_matches_h2_for_any_client_sequence(
    actions: list[Any], cuts: list[int], consume: bool, window: int, budget: int
) -> None:
    twin = _Twin(Settings(initial_window_size=window, connection_window_size=3 * window), budget)
    peer = twin.peer
    for action in actions:
        try:
            if action[0] == "open":
                peer.send_headers(action[1], request_headers(), end_stream=action[2])
            elif action[0] == "data":
                _, sid, sizes, frame_size, end = action
                body = b"".join(grpc_frame(bytes([i % 251]) * n) for i, n in enumerate(sizes))
                for pos in range(0, len(body), frame_size):
                    chunk = body[pos : pos + frame_size]
                    last = end and pos + frame_size >= len(body)
                    if peer.local_flow_control_window(sid) < len(chunk):
                        break  # h2 would refuse: the window is full until we consume
                    peer.send_data(sid, chunk, end_stream=last)
            elif action[0] == "reset":
                peer.reset_stream(action[1])
            elif action[0] == "ping":
                peer.ping(b"12345678")
            else:
                _, sid, size = action
                if peer.local_flow_control_window(sid) >= size + 8:
                    peer.send_data(sid, grpc_frame(b"p" * size), pad_length=2)
        except (h2.exceptions.ProtocolError, KeyError):
            continue  # h2 would not send this; skip it
        twin.deliver(peer.data_to_send(), cuts, consume)
        if twin.failed:
            return


def test_server_connection_fast_data_handles_a_frame_split_across_reads() -> None:
    twin = _Twin(Settings())
    twin.peer.send_headers(1, request_headers())
    twin.deliver(twin.peer.data_to_send(), [])
    for i in range(20):
        twin.peer.send_data(1, grpc_frame(b"%d" % i * 300))
    data = twin.peer.data_to_send()
    # Cut inside a frame header, inside a payload, and inside a gRPC message prefix.
    twin.deliver(data, [4, 700, 1500, 1503, 5000])
    assert not twin.failed


def test_server_connection_fast_data_reports_many_messages_of_one_read_at_once() -> None:
    twin = _Twin(Settings())
    twin.peer.send_headers(1, request_headers())
    twin.deliver(twin.peer.data_to_send(), [])
    for i in range(6):
        twin.peer.send_data(1, grpc_frame(b"m%d" % i))
    events = twin.fast.receive_data(twin.peer.data_to_send())
    assert [type(e) for e in events] == [MessagesReceived]
    assert events[0].messages == [b"m%d" % i for i in range(6)]
