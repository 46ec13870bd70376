"""The `traffic` suite's two clients, each run as its own process:

* ``flood TARGET --calls N --waves W --connections C``: W waves of N concurrent Execute-get
  calls (prism's own Trio channel, spread over C connections); each wave starts when the
  previous one has ended. Prints JSON: the wall-clock window of the flood and the statuses.
* ``bystander TARGET --seconds S --interval I [--stop-file F]``: one grpcio call every I
  seconds for S seconds (or until F exists) on its own connection. Prints JSON: each call's
  start (CLOCK_MONOTONIC, comparable across processes), latency and status.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import trio

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest
from prism.sdk.typed import pack

METHOD = "/prism.proxy.v1.DataProxy/Execute"


def get_request(namespace: str) -> bytes:
    return bytes(
        ExecuteRequest(namespace=namespace, operation="get", typed_params=pack(GetRequest(key="k")))
    )


async def flood(
    target: str, namespace: str, calls: int, waves: int, connections: int
) -> dict[str, Any]:
    request = get_request(namespace)
    statuses: collections.Counter[str] = collections.Counter()
    wave_seconds: list[float] = []
    async with trio.open_nursery() as outer:
        channels: list[pg.Channel] = []
        for _ in range(connections):
            channels.append(await outer.start(_channel, target))
        # Connect every channel before the clock starts.
        for channel in channels:
            await channel.unary_unary(METHOD, request, bytes, timeout=30)

        async def one(channel: pg.Channel) -> None:
            try:
                await channel.unary_unary(METHOD, request, bytes, timeout=60)
                statuses["OK"] += 1
            except pg.GrpcError as exc:
                statuses[exc.status.name] += 1

        start = time.monotonic()
        for _ in range(waves):
            began = time.monotonic()
            async with trio.open_nursery() as nursery:
                for i in range(calls):
                    nursery.start_soon(one, channels[i % connections])
            wave_seconds.append(time.monotonic() - began)
        end = time.monotonic()
        outer.cancel_scope.cancel()
    return {"start": start, "end": end, "statuses": dict(statuses), "wave_seconds": wave_seconds}


async def _channel(target: str, *, task_status: trio.TaskStatus[pg.Channel]) -> None:
    async with pg.open_channel(target) as channel:
        task_status.started(channel)
        await trio.sleep_forever()


def bystander(
    target: str, namespace: str, seconds: float, interval: float, stop_file: str | None
) -> dict[str, Any]:
    request = get_request(namespace)
    samples: list[tuple[float, float, str]] = []
    with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        call = channel.unary_unary(METHOD)
        call(request, timeout=30)  # connected before the first sample
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        stop = Path(stop_file) if stop_file else None
        while (now := time.monotonic()) < end and not (stop is not None and stop.exists()):
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            began = time.monotonic()
            try:
                call(request, timeout=30)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name  # type: ignore[attr-defined]
            samples.append((began, time.monotonic() - began, status))
    return {"samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic_client")
    parser.add_argument("role", choices=["flood", "bystander"])
    parser.add_argument("target")
    parser.add_argument("--namespace", default="kv")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--stop-file", help="bystander: stop once this file exists")
    args = parser.parse_args()
    if args.role == "flood":
        result = trio.run(
            flood, args.target, args.namespace, args.calls, args.waves, args.connections
        )
    else:
        result = bystander(args.target, args.namespace, args.seconds, args.interval, args.stop_file)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
