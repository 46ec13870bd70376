"""The `pubsub` suite's subscribers: many streams on one topic, in a process of their own.

Run as `python -m bench.pubsub_client` with a JSON plan (`Plan`) as the first line of stdin. It
opens `plan.subscribers` ExecuteStream calls (`subscribe` on one topic) spread round-robin over
`plan.channels` grpcio asyncio channels, each its own TCP connection (a local subchannel pool,
so grpcio does not share one connection between them). It prints `ready` on stdout once every
stream has received a message, then counts what arrives until the runner writes a line
`{"last": N}` (the index of the last measured message); it waits until every stream still open
has received that one (or `plan.drain_s` passed) and prints its results as one JSON line.

Messages are not decoded: the publisher puts its monotonic clock (ns) and the message's index
in the first 16 bytes of the payload, and those sit at a fixed offset in every `StreamResponse`
(see `payload_offset`), so a delivery costs this process a slice and two int conversions on top
of grpcio's own work. Deliveries are counted per stream and per second of the run; latency
(publish to receipt) is kept for every tenth stream.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from prism._proto.prism.data.v1 import Message, SubscribeRequest
from prism._proto.prism.proxy.v1 import StreamRequest, StreamResponse
from prism.sdk.typed import pack

METHOD = "/prism.proxy.v1.DataProxy/ExecuteStream"
#: Per channel: its own connection; no retry machinery; messages up to 16 MiB.
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 16 << 20),
]
#: Latency is recorded for streams whose number is a multiple of this.
LATENCY_EVERY = 10


@dataclass(frozen=True)
class Plan:
    address: str
    namespace: str
    topic: str
    subscribers: int
    channels: int
    payload_size: int
    drain_s: float = 10.0


def payload_offset(topic: str, size: int) -> int:
    """Where the payload starts in an encoded StreamResponse carrying a Message on `topic` with a
    `size`-byte payload: the same for every sequence number (only the sequence's varint, after
    the payload, changes length; the length prefixes before it keep theirs)."""
    marker = bytes(range(256)) * (size // 256 + 1)
    marker = marker[:size]
    offsets = set()
    for sequence in (1, 1 << 20, 1 << 40):
        message = Message(topic=topic, payload=marker, sequence=sequence)
        encoded = bytes(StreamResponse(typed_result=pack(message)))
        offsets.add(encoded.find(marker))
    if len(offsets) != 1:
        raise RuntimeError(f"the payload moves with the sequence number: {offsets}")
    return offsets.pop()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else 0.0


@dataclass
class Stream:
    number: int
    received: int = 0  # measured messages (index >= 0)
    last_index: int = -1
    warm: bool = False
    status: str | None = None  # how it ended, when it ended before the runner stopped it
    details: str = ""
    latencies_ns: list[int] = field(default_factory=list)


class Subscribers:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.streams = [Stream(i) for i in range(plan.subscribers)]
        self.offset = payload_offset(plan.topic, plan.payload_size)
        self.t0 = time.monotonic_ns()
        self.per_second: dict[int, int] = {}
        self.warm_left = plan.subscribers
        self.ready = asyncio.Event()
        self.last = -2  # the last measured index, once the runner says
        self.stopping = False
        self.open = plan.subscribers
        self.progress = asyncio.Event()

    async def run_stream(self, channel: grpc.aio.Channel, stream: Stream) -> None:
        request = bytes(
            StreamRequest(
                namespace=self.plan.namespace,
                operation="subscribe",
                typed_params=pack(SubscribeRequest(topic=self.plan.topic)),
            )
        )
        call = channel.stream_stream(METHOD)(iter([request]))
        start = self.offset
        keep_latency = stream.number % LATENCY_EVERY == 0
        clock = time.monotonic_ns
        per_second = self.per_second
        t0 = self.t0
        try:
            async for response in call:
                now = clock()
                index = int.from_bytes(response[start + 8 : start + 16], "little", signed=True)
                if index < 0:
                    if not stream.warm:
                        self._warmed(stream)
                    continue
                stream.received += 1
                stream.last_index = index
                second = (now - t0) // 1_000_000_000
                per_second[second] = per_second.get(second, 0) + 1
                if keep_latency:
                    sent = int.from_bytes(response[start : start + 8], "little")
                    stream.latencies_ns.append(now - sent)
                if index >= self.last >= 0:
                    self.progress.set()
        except grpc.aio.AioRpcError as exc:
            if not self.stopping:
                stream.status = exc.code().name
                stream.details = exc.details() or ""
        except asyncio.CancelledError:
            if not self.stopping:
                stream.status = "CANCELLED (client)"
            raise
        else:
            if not self.stopping:
                stream.status = "OK (ended)"
        finally:
            self.open -= 1
            self.progress.set()
            if not stream.warm:
                self._warmed(stream)  # ended before its first message: do not wait for it

    def _warmed(self, stream: Stream) -> None:
        stream.warm = True
        self.warm_left -= 1
        if self.warm_left == 0:
            self.ready.set()

    def caught_up(self) -> bool:
        return all(s.status is not None or s.last_index >= self.last for s in self.streams)

    def results(self, cpu_s: float) -> dict[str, Any]:
        latencies = sorted(ns for s in self.streams for ns in s.latencies_ns)
        ended: dict[str, int] = {}
        for s in self.streams:
            if s.status is not None:
                key = f"{s.status}: {s.details}" if s.details else s.status
                ended[key] = ended.get(key, 0) + 1
        return {
            "subscribers": len(self.streams),
            "received": [s.received for s in self.streams],
            "disconnected": sum(1 for s in self.streams if s.status is not None),
            "ended": ended,
            "per_second": [
                self.per_second.get(i, 0) for i in range(max(self.per_second, default=-1) + 1)
            ],
            "latency_samples": len(latencies),
            "latency_p50_ms": percentile(latencies, 0.5) / 1e6,
            "latency_p99_ms": percentile(latencies, 0.99) / 1e6,
            "latency_max_ms": (latencies[-1] / 1e6) if latencies else 0.0,
            "client_cpu_s": cpu_s,
        }


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, grpcio's included
    return usage.ru_utime + usage.ru_stime


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run(plan: Plan) -> dict[str, Any]:
    subs = Subscribers(plan)
    channels = [
        grpc.aio.insecure_channel(plan.address, options=CHANNEL_OPTIONS)
        for _ in range(plan.channels)
    ]
    tasks = [
        asyncio.create_task(subs.run_stream(channels[i % plan.channels], stream))
        for i, stream in enumerate(subs.streams)
    ]
    await subs.ready.wait()
    print("ready", flush=True)
    cpu0 = _own_cpu_seconds()
    command = json.loads(await _read_line())
    subs.last = int(command["last"])
    deadline = time.monotonic() + plan.drain_s
    while not subs.caught_up() and time.monotonic() < deadline:
        subs.progress.clear()
        try:
            await asyncio.wait_for(subs.progress.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            break
    cpu = _own_cpu_seconds() - cpu0
    subs.stopping = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return subs.results(cpu)


def main() -> int:
    plan = Plan(**json.loads(sys.stdin.readline()))
    result = asyncio.run(run(plan))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
