"""What every echo server shares: its command line and message-size limit."""

from __future__ import annotations

import argparse
import sys

HOST = "127.0.0.1"
#: Every server accepts messages up to this size (the large scenario sends 16 MiB + a few bytes).
MAX_MESSAGE_BYTES = 64 << 20


def parse_args(
    description: str, *, stubs: bool = True, uvloop: bool = False, compression: bool = False
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int, help=f"TCP port to listen on ({HOST})")
    if stubs:
        parser.add_argument(
            "--stubs", required=True, help="directory holding the generated echo_pb2* modules"
        )
    if uvloop:
        parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    if compression:
        parser.add_argument("--compression", choices=["gzip"], help="compress responses")
    args = parser.parse_args()
    if stubs:
        sys.path.insert(0, args.stubs)
    return args
