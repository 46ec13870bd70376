"""Which streams h2 holds, and counting the open ones without scanning them all.

h2 counts open streams by scanning every stream it holds (and forgets closed ones only during
that scan) whenever a peer opens a stream: O(streams) per RPC. :class:`StreamTable` answers
"may one more stream open?" without a count while fewer streams than the limit are held at
all; a real scan (which also forgets closed streams) runs only near the limit or once the
streams held have doubled since the last scan.

h2 also remembers how every forgotten stream closed (``_closed_streams``: reset or ended), so
that a late frame on it gets the answer RFC 9113 §5.1 asks for (ignored, RST_STREAM, or a
connection error). It keeps 65,536 of them: ~8 MB per long-lived connection. Late frames
come within a round trip of the close, so a record of twice the concurrency limit (at least
``MIN_CLOSED_STREAMS``) is what the protocol needs. A frame on a stream closed longer ago is
answered as RFC 9113 §5.1 allows once the period of ignoring frames after a RST_STREAM is
over: as an error (h2's answer for a stream id below the highest seen, STREAM_CLOSED).
"""

from __future__ import annotations

import h2.connection
import h2.utilities

#: The fewest closed streams remembered, whatever the concurrency limit.
MIN_CLOSED_STREAMS = 1024


class StreamTable(h2.connection.H2Connection):
    _prune_at = 64

    def keep_closed_streams(self, count: int) -> None:
        """Remember how at most ``count`` closed streams ended (the newest)."""
        self._closed_streams = h2.utilities.SizeLimitDict(size_limit=count)

    def room_for_inbound(self) -> bool:
        """Whether the peer may open one more stream (our MAX_CONCURRENT_STREAMS)."""
        return self._room(
            int(not self.config.client_side), self.local_settings.max_concurrent_streams
        )

    def room_for_outbound(self) -> bool:
        """Whether we may open one more stream (the peer's MAX_CONCURRENT_STREAMS)."""
        return self._room(int(self.config.client_side), self.remote_settings.max_concurrent_streams)

    def _room(self, remainder: int, limit: int) -> bool:
        held = len(self.streams)
        if held < limit and held < self._prune_at:
            return True  # held >= open streams: the open count is below the limit too
        count = self._open_streams(remainder)
        self._prune_at = max(64, 2 * len(self.streams))
        return count < limit
