"""A plugin the traffic tests load in-process (``traffic_plugins:FlakyPlugin``): it fails on
demand, counts the calls that reach it, and holds calls until told to let them go.

The test reaches the instances the proxy made through ``FlakyPlugin.instances`` (newest last):
a test plugin's registry, so the test can see whether a call reached the plugin without a
call of its own (which the breaker under test would refuse too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import trio

from prism.sdk import BackendPlugin, GrpcError, OperationContext, Status, operation


class FlakyPlugin(BackendPlugin):
    name = "flaky"
    version = "0.1.0"
    instances: ClassVar[list[FlakyPlugin]] = []

    def __init__(self) -> None:
        super().__init__()
        #: The status every ``work`` call fails with; None: it succeeds.
        self.failing: Status | None = None
        self.calls = 0
        self.entered = 0  # ``hold`` calls that reached the plugin
        self.gate = trio.Event()
        FlakyPlugin.instances.append(self)

    async def initialize(self, config: Any, credentials: Mapping[str, str], namespace: str) -> None:
        self.namespace = namespace

    @operation("work", params=bytes, result=bytes)
    async def work(self, params: bytes, ctx: OperationContext) -> bytes:
        self.calls += 1
        if self.failing is not None:
            raise GrpcError.for_status(self.failing, "the backend is down")
        return b"ok"

    @operation("hold", params=bytes, result=bytes)
    async def hold(self, params: bytes, ctx: OperationContext) -> bytes:
        """Waits until the test sets ``gate``."""
        self.entered += 1
        await self.gate.wait()
        return b"released"

    @operation("sleep", params=bytes, result=bytes)
    async def sleep(self, params: bytes, ctx: OperationContext) -> bytes:
        await trio.sleep(float(params))
        return b"slept"
