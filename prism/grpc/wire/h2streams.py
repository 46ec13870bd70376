"""Which streams h2 holds, and counting the open ones without scanning them all.

h2 counts open streams by scanning every stream it holds (and forgets closed ones only during
that scan) whenever a peer opens a stream: O(streams) per RPC. :class:`StreamTable` answers
"may one more stream open?" without a count while fewer streams than the limit are held at
all; a real scan (which also forgets closed streams) runs only near the limit or once the
streams held have doubled since the last scan.
"""

from __future__ import annotations

import h2.connection


class StreamTable(h2.connection.H2Connection):
    _prune_at = 64

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
