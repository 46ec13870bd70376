"""How long the fleet's etcd calls wait, and how reconnection backs off."""

from __future__ import annotations

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "READ_DEADLINE"]

#: Seconds before the first retry after etcd could not be reached; doubled per failure.
BACKOFF_MIN = 0.1
#: The longest wait between two attempts to reach etcd.
BACKOFF_MAX = 5.0
#: Longest wait for one etcd request (a watch waits for events for as long as it takes).
READ_DEADLINE = 10.0
