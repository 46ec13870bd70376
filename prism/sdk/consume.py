"""What every plugin serving the ``log`` contract checks the same way: the acknowledgements a
client sends on a consume stream (``prism.data.v1.ConsumeAck``)."""

from __future__ import annotations

from collections.abc import Container

from prism._proto.prism.data.v1 import ConsumeAck
from prism.sdk.errors import InvalidArgument

__all__ = ["Position", "acknowledged"]

#: A record's (partition, offset).
Position = tuple[int, int]


def acknowledged(request: ConsumeAck, delivered: Container[Position]) -> list[Position]:
    """The positions ``request`` acknowledges, each one ``delivered`` on this stream and not
    acknowledged yet; INVALID_ARGUMENT otherwise (the contract then ends the stream, and what it
    delivered unacknowledged is delivered again), or for a position named twice."""
    positions = [(p.partition, p.offset) for p in request.records]
    if len(set(positions)) != len(positions):
        raise InvalidArgument("the same record acknowledged twice in one ConsumeAck")
    for partition, offset in positions:
        if (partition, offset) not in delivered:
            raise InvalidArgument(
                f"ack of ({partition}, {offset}): not a record this stream delivered and has "
                "not acknowledged yet"
            )
    return positions
