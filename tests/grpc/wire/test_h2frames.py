"""prism's frame reader shortcut against h2's FrameBuffer: same frames, same errors."""

from __future__ import annotations

import itertools

import h2.exceptions
import h2.frame_buffer
import hyperframe.exceptions
import hyperframe.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.grpc.wire.h2frames import FrameReader

PREAMBLE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _data(sid: int, body: bytes, flags: set[str], pad: int) -> hyperframe.frame.Frame:
    frame = hyperframe.frame.DataFrame(sid, body, flags=flags & {"END_STREAM"})
    if "PADDED" in flags:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame


def _headers(sid: int, body: bytes, flags: set[str], pad: int) -> list[hyperframe.frame.Frame]:
    frame = hyperframe.frame.HeadersFrame(sid, body, flags=flags & {"END_STREAM", "PRIORITY"})
    if "PRIORITY" in flags:
        frame.depends_on, frame.stream_weight, frame.exclusive = 3, 200, True
    if "PADDED" in flags:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    if "CONTINUED" not in flags:
        frame.flags.add("END_HEADERS")
        return [frame]
    more = hyperframe.frame.ContinuationFrame(sid, b"more", flags=["END_HEADERS"])
    return [frame, more]


_frame = st.one_of(
    st.builds(
        lambda sid, body, flags, pad: [_data(sid, body, flags, pad)],
        st.sampled_from([1, 3, 2**31 - 1]),
        st.binary(max_size=300),
        st.sets(st.sampled_from(["END_STREAM", "PADDED"])),
        st.integers(0, 20),
    ),
    st.builds(
        _headers,
        st.sampled_from([1, 5]),
        st.binary(max_size=100),
        st.sets(st.sampled_from(["END_STREAM", "PADDED", "PRIORITY", "CONTINUED"])),
        st.integers(0, 20),
    ),
    st.builds(lambda: [hyperframe.frame.PingFrame(0, b"12345678")]),
    st.builds(lambda: [hyperframe.frame.WindowUpdateFrame(1, window_increment=10)]),
)


def _fields(frame: hyperframe.frame.Frame) -> dict[str, object]:
    fields = dict(vars(frame))
    fields["flags"] = sorted(frame.flags)
    return {"type": type(frame), **fields}


def _read(buffer: h2.frame_buffer.FrameBuffer, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    buffer.max_frame_size = 16384
    try:
        for chunk in chunks:
            buffer.add_data(chunk)
            out.extend(_fields(f) for f in buffer)
    except (h2.exceptions.ProtocolError, hyperframe.exceptions.HyperframeError) as exc:
        out.append(type(exc))
    return out


def _merged(frames: list[object]) -> list[object]:
    """Frames as a reader that merges DATA frames would give them: consecutive unpadded DATA
    frames of one stream, up to one with END_STREAM, become one."""
    out: list[object] = []
    for frame in frames:
        last = out[-1] if out else None
        if (
            isinstance(frame, dict)
            and isinstance(last, dict)
            and frame["type"] is last["type"] is hyperframe.frame.DataFrame
            and frame["stream_id"] == last["stream_id"]
            and "PADDED" not in frame["flags"]
            and "PADDED" not in last["flags"]
            and "END_STREAM" not in last["flags"]
        ):
            data = last["data"] + frame["data"]
            out[-1] = {**last, "data": data, "body_len": len(data), "flags": frame["flags"]}
        else:
            out.append(frame)
    return out


def _normalized(frames: list[object]) -> list[object]:
    return [
        {**f, "data": bytes(f["data"])} if isinstance(f, dict) and "data" in f else f
        for f in _merged(frames)
    ]


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frame, max_size=12), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_reads_like_h2(frames: list[list[hyperframe.frame.Frame]], cuts: list[int]) -> None:
    wire = PREAMBLE + b"".join(f.serialize() for group in frames for f in group)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]
    assert _normalized(_read(FrameReader(server=True), chunks)) == _normalized(
        _read(h2.frame_buffer.FrameBuffer(server=True), chunks)
    )


def test_merges_data_frames_of_a_stream() -> None:
    frames = [
        hyperframe.frame.DataFrame(1, b"a" * 100),
        hyperframe.frame.DataFrame(1, b"b" * 200),
        hyperframe.frame.DataFrame(1, b"c", flags=["END_STREAM"]),
        hyperframe.frame.DataFrame(1, b"d"),  # after END_STREAM: not merged
        hyperframe.frame.DataFrame(3, b"e"),  # another stream
    ]
    chunks = [PREAMBLE + b"".join(f.serialize() for f in frames)]
    got = _read(FrameReader(server=True), chunks)
    assert [(f["stream_id"], f["data"], f["flags"], f["body_len"]) for f in got] == [  # type: ignore[index]
        (1, b"a" * 100 + b"b" * 200 + b"c", ["END_STREAM"], 301),
        (1, b"d", [], 1),
        (3, b"e", [], 1),
    ]


def test_large_data_frame_payload_is_a_view() -> None:
    frame = hyperframe.frame.DataFrame(1, b"x" * 100_000, flags=["END_STREAM"])
    buffer = FrameReader(server=True)
    buffer.max_frame_size = 1 << 20
    buffer.add_data(PREAMBLE + frame.serialize() + b"\0\0")
    [got] = list(buffer)
    assert isinstance(got.data, memoryview)  # type: ignore[attr-defined]
    assert bytes(got.data) == b"x" * 100_000  # type: ignore[attr-defined]
    assert bytes(buffer._data) == b"\0\0"


@pytest.mark.parametrize(
    "wire",
    [
        bytes.fromhex("000004000000000000") + b"abcd",  # DATA on stream 0
        bytes.fromhex("000004010400000000") + b"abcd",  # HEADERS on stream 0
        bytes.fromhex("004001000000000001") + b"x" * 16385,  # over max_frame_size
        bytes.fromhex("000004010400000001")
        + b"abcd"  # HEADERS, then
        + bytes.fromhex("000004000000000001")
        + b"abcd",  # DATA: fine
        bytes.fromhex("000004010000000001")
        + b"abcd"  # HEADERS without END_HEADERS
        + bytes.fromhex("000004000000000001")
        + b"abcd",  # then DATA: error
    ],
)
def test_malformed_frames_like_h2(wire: bytes) -> None:
    chunks = [PREAMBLE, wire]
    assert _read(FrameReader(server=True), chunks) == _read(
        h2.frame_buffer.FrameBuffer(server=True), chunks
    )
