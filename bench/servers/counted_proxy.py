"""The proxy on a config file, with its copies counted on demand (:mod:`bench.copycount`).

`python -m bench.servers.counted_proxy --config FILE --report PATH`: prints
``listening HOST:PORT`` once the front door accepts calls. SIGUSR1 starts counting, SIGUSR2
stops and writes the :class:`~bench.copycount.Copies` as JSON to PATH, then prints
``reported``. SIGTERM stops the proxy gracefully.
Used by tests/proxy/test_frontdoor_zerocopy.py and the `zerocopy` bench suite (which reads
this process's peak RSS from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import trio

from bench.copycount import CopyCounter
from prism.config import load_config
from prism.proxy.app import Proxy


async def serve(config_path: Path, report: Path) -> None:
    config = load_config(config_path)
    proxy = Proxy(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM) as signals:
            await nursery.start(proxy.run)
            assert proxy.address is not None
            print(f"listening {proxy.address[0]}:{proxy.address[1]}", flush=True)
            counter: CopyCounter | None = None
            async for signum in signals:
                if signum == signal.SIGUSR1 and counter is None:
                    counter = CopyCounter()
                    counter.start()
                    print("counting", flush=True)
                elif signum == signal.SIGUSR2 and counter is not None:
                    copies = counter.stop()
                    counter = None
                    partial = report.with_suffix(".partial")
                    partial.write_text(json.dumps(copies.as_dict()))
                    os.replace(partial, report)
                    print("reported", flush=True)
                elif signum == signal.SIGTERM:
                    break
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    trio.run(serve, args.config, args.report)


if __name__ == "__main__":
    main()
