"""nats-py's asyncio loop: the SDK's (``prism.sdk.aio``), shared with other asyncio clients."""

from __future__ import annotations

from prism.sdk.aio import AsyncioLoop, Pending

__all__ = ["AsyncioLoop", "Pending"]
