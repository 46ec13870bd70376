"""The `proxy` suite's in-process plugin path without the gRPC stack: CPU µs per call.

`python -m bench.proxy_path [--calls N] [--rounds R] [--value-size B]` prints one JSON document:
the median (and min) over rounds of the CPU time per call of what the front door's handler does
for an `Execute` `get` on an in-process memstore namespace once prism.grpc has handed it the
request bytes: read the target (``envelope.target``), the plugin instance's
``execute_encoded`` (envelope, params, the plugin, the result), and ``check_response``. No
socket, no HTTP/2: the share of a proxy call that the plugin path itself costs, steady enough
on a busy machine to compare two trees (the suite runs it for this tree and `--baseline`'s,
alternately; `prism` is whichever is first on the path).

As the front door does, the call runs in a cancel scope of its caller's, given to the engine
through ``CALLER_CANCEL`` where the tree has it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import trio

from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.plugin.v1 import InitializeRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest
from prism.proxy.envelope import check_response, target
from prism.sdk.instance import open_plugin
from prism.sdk.typed import pack


async def measure(calls: int, rounds: int, value_size: int) -> dict[str, Any]:
    from prism_plugin_memstore.plugin import MemstorePlugin

    try:
        from prism.sdk.instance import CALLER_CANCEL  # type: ignore[attr-defined]
    except ImportError:  # a tree from before it
        CALLER_CANCEL = None
    async with open_plugin(MemstorePlugin()) as instance:
        answer = await instance.initialize(InitializeRequest(namespace="memstore"))
        if not answer.success:
            raise SystemExit(f"memstore did not initialize: {answer.error}")
        params = SetRequest(key="bench-0001", value=bytes(value_size))
        set_request = ExecuteRequest(namespace="memstore", operation="set")
        set_request.typed_params = pack(params)
        check_response(await instance.execute_encoded(bytes(set_request)))
        get = ExecuteRequest(namespace="memstore", operation="get")
        get.typed_params = pack(GetRequest(key="bench-0001"))
        request = bytes(get)
        per_call = []
        with trio.CancelScope() as scope:
            if CALLER_CANCEL is not None:
                CALLER_CANCEL.set(scope.cancel)
            for _ in range(calls // 10):  # warm up
                target(request)
                check_response(await instance.execute_encoded(request))
            for _ in range(rounds):
                started = time.process_time()
                for _ in range(calls):
                    target(request)
                    check_response(await instance.execute_encoded(request))
                per_call.append((time.process_time() - started) / calls * 1e6)
    return {
        "us_per_call": statistics.median(per_call),
        "us_per_call_min": min(per_call),
        "rounds": per_call,
        "calls": calls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_path", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args()
    json.dump(trio.run(measure, args.calls, args.rounds, args.value_size), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
