"""``python -m prism.hosting.launcher [checks] <plugin>``: the sidecar process the proxy launches
by default (a namespace's ``command`` replaces it).

It runs in the child: checks it was launched by the proxy, verifies the plugin's files with the
policy the proxy passes as options (here, in the process that imports them: its ``sys.path`` is
the one that counts), imports the plugin, agrees on a protocol version and serves the plugin on
the socket the proxy named (:func:`prism.sdk.runner.serve_plugin`). A refusal is one
``prism: plugin ... refused: <reason>`` line on stderr and exit status 2.

The proxy's side of hosting lives here, not in ``prism.sdk``, because verification is the
proxy's policy: the SDK imports nothing from ``prism.hosting``.
"""

from __future__ import annotations

import argparse
import sys

import trio

from prism import logsetup
from prism.hosting.loader import load_plugin_class
from prism.hosting.verify import PluginRefused, VerifyPolicy
from prism.plugin_protocol.handshake import (
    SUPPORTED_PROTOCOL_VERSIONS,
    check_magic_cookie,
    negotiate_protocol_version,
    plugin_log_level,
    plugin_max_message_size,
    plugin_socket_path,
)
from prism.sdk.runner import serve_plugin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.hosting.launcher")
    parser.add_argument("plugin", help="entry point name or package.module:Class")
    parser.add_argument(
        "--no-verify-permissions",
        action="store_true",
        help="do not refuse world-writable or foreign-owned plugin files",
    )
    parser.add_argument(
        "--require-signature", action="store_true", help="refuse a plugin without a valid .sig"
    )
    parser.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        help="ed25519 public key (PEM text, base64 raw key, or a file); repeatable",
    )
    args = parser.parse_args(argv)
    check_magic_cookie()
    # JSON lines on stderr, which the proxy parses into records of its own (prism.logsetup),
    # from the level the proxy logs them at.
    logsetup.configure("json", plugin_log_level())
    try:
        policy = VerifyPolicy.from_config(
            require_signature=args.require_signature,
            trusted_keys=args.trusted_key,
            check_permissions=not args.no_verify_permissions,
        )
        cls = load_plugin_class(args.plugin, policy)
    except (PluginRefused, ValueError) as exc:
        print(f"prism: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    version = negotiate_protocol_version(SUPPORTED_PROTOCOL_VERSIONS)
    trio.run(
        lambda: serve_plugin(
            cls(),
            unix_socket=plugin_socket_path(),
            handshake_version=version,
            watch_stdin=True,
            max_message_size=plugin_max_message_size(),
            freeze_gc=True,
        )
    )


if __name__ == "__main__":
    main()
