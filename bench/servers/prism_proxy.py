"""The proxy (`prism serve`'s ``Proxy``) on a config file, optionally without its call-level
stages: the `proxy` suite's "route" case, the front door → route → plugin path alone.

`python -m bench.servers.prism_proxy PORT --config FILE [--no-call-stages]`: the config's
``listen`` must be 127.0.0.1:PORT. With ``--no-call-stages`` the front door's server is built
without the pipeline's interceptor (``CallStages``): no RequestInfo is made before the handler,
nothing is counted or recorded after it; the namespace-level stages still run (no-ops unless
configured). Everything else is the proxy as `prism serve` runs it.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import trio

from prism import grpc as pg
from prism.config import load_config
from prism.proxy.app import Proxy
from prism.proxy.frontdoor import DataProxyService


async def serve(config_path: Path, call_stages: bool, freeze_gc: bool = True) -> None:
    config = load_config(config_path)
    proxy = Proxy(config)
    if not call_stages:
        proxy.server = pg.Server(
            [DataProxyService(proxy.host, proxy.pipeline)],
            pg.ServerOptions(
                max_receive_message_size=config.max_message_size,
                max_send_message_size=config.max_message_size,
            ),
        )
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        if freeze_gc:
            # As `prism serve` does once started (prism/cli/main.py): what startup made is no
            # longer scanned by every later garbage collection.
            gc.collect()
            gc.freeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int, help="the port of the config's listen address")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--no-call-stages", action="store_true")
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave the GC as it is")
    args = parser.parse_args()
    trio.run(serve, args.config, not args.no_call_stages, not args.no_gc_freeze)


if __name__ == "__main__":
    main()
