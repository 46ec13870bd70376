"""Events the sans-IO connections report, in h2's vocabulary.

Plain slotted dataclasses, treated as read-only: a frozen dataclass's ``__init__`` goes through
``object.__setattr__`` per field, which showed up at several events per RPC.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism.grpc.wire.metadata import Metadata
from prism.grpc.wire.status import GrpcError, Status


@dataclass(slots=True)
class RequestReceived:
    """A new RPC: the request headers were valid and name a method."""

    stream_id: int
    method: str
    metadata: Metadata
    timeout: float | None
    authority: str


@dataclass(slots=True)
class ResponseHeadersReceived:
    stream_id: int
    metadata: Metadata
    encoding: str = "identity"  # the response's grpc-encoding


@dataclass(slots=True)
class MessageReceived:
    stream_id: int
    message: bytes


@dataclass(slots=True)
class InputEnded:
    """The peer half-closed the stream: no more messages will come."""

    stream_id: int


@dataclass(slots=True)
class ResponseEnded:
    """A client stream ended with a status (from trailers, trailers-only or an HTTP error)."""

    stream_id: int
    status: Status
    message: str
    trailers: Metadata


@dataclass(slots=True)
class StreamAborted:
    """The stream is over without a normal end: peer RST_STREAM, or a local protocol error.

    ``error`` is what the local side of the call should see.
    """

    stream_id: int
    error: GrpcError


@dataclass(slots=True)
class WindowUpdated:
    """Flow control opened: streams with queued bytes may have drained."""


@dataclass(slots=True)
class PingAcknowledged:
    data: bytes


@dataclass(slots=True)
class GoAwayReceived:
    """The peer will accept no stream above ``last_stream_id``; those below may finish."""

    last_stream_id: int
    error_code: int


@dataclass(slots=True)
class FloodDetected:
    """The peer went over a flood budget (``reason``: the GOAWAY's debug data, e.g.
    ``"too_many_pings"``). GOAWAY(ENHANCE_YOUR_CALM) is queued and the connection closed."""

    reason: str


Event = (
    RequestReceived
    | ResponseHeadersReceived
    | MessageReceived
    | InputEnded
    | ResponseEnded
    | StreamAborted
    | WindowUpdated
    | PingAcknowledged
    | GoAwayReceived
    | FloodDetected
)
