"""A raw-bytes plugin for the zero-copy tests and the `zerocopy` bench suite.

Every payload is ``raw_params`` / ``raw_result`` bytes, never decoded: what the proxy must
forward without copying or holding whole (docs/architecture.md, "Zero-copy path").

- ``echo`` (Execute): the params back, as they came.
- ``sink`` (ExecuteStream): consumes the client's chunks (the first request's params and every
  later request's) and answers once, at the end: 8 bytes of the byte count, then their
  SHA-256 digest. Nothing is kept but the running digest.
- ``source`` (ExecuteStream): params ``COUNT:SIZE`` (ASCII); streams COUNT chunks of SIZE
  bytes (the same chunk every time: the plugin holds one), then ends.
- ``pid`` (Execute): this process's id (the bench reads its memory from /proc).
- ``copies.start`` / ``copies.stop`` (Execute): count the copies this process makes from now
  on (:mod:`bench.copycount`, which needs memray), and stop and report them (JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from prism.sdk import BackendPlugin, OperationContext, OperationStream, operation, stream_operation


class RawBytes(BackendPlugin):
    name = "rawbytes"
    version = "1.0.0"
    config_required = False

    _counter: Any = None

    @operation("echo", params=bytes, result=bytes)
    async def echo(self, params: bytes, ctx: OperationContext) -> bytes:
        return params

    @stream_operation("sink", params=bytes, result=bytes, inbound=bytes)
    async def sink(self, params: bytes, stream: OperationStream) -> None:
        digest = hashlib.sha256(params)
        total = len(params)
        async for chunk in stream:
            assert isinstance(chunk, bytes)
            digest.update(chunk)
            total += len(chunk)
        await stream.send(total.to_bytes(8, "big") + digest.digest())

    @stream_operation("source", params=bytes, result=bytes)
    async def source(self, params: bytes, stream: OperationStream) -> None:
        count, _, size = params.decode().partition(":")
        chunk = os.urandom(int(size))
        for _ in range(int(count)):
            await stream.send(chunk)

    @operation("pid", params=bytes, result=bytes)
    async def pid(self, params: bytes, ctx: OperationContext) -> bytes:
        return str(os.getpid()).encode()

    @operation("copies.start", params=bytes, result=bytes)
    async def copies_start(self, params: bytes, ctx: OperationContext) -> bytes:
        from bench.copycount import CopyCounter

        self._counter = CopyCounter(int(params or b"2048"))
        self._counter.start()
        return b"started"

    @operation("copies.stop", params=bytes, result=bytes)
    async def copies_stop(self, params: bytes, ctx: OperationContext) -> bytes:
        counter, self._counter = self._counter, None
        if counter is None:
            return b"{}"
        return json.dumps(counter.stop().as_dict()).encode()
