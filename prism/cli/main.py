"""The ``prism`` command."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

import prism
from prism.cli import admin, keys
from prism.cli import config as config_cli
from prism.config import (
    ConfigError,
    ProxyConfig,
    admin_from_target,
    default_config,
    load_config,
)
from prism.grpc.transport import server_ssl_context
from prism.hosting.host import PluginStartFailed
from prism.hosting.loader import load_plugin_class
from prism.hosting.verify import PluginRefused
from prism.proxy.app import ListenFailed, Proxy

log = logging.getLogger("prism")
ADMIN_HELP = (
    "the proxy's admin API: host:port or unix:/path (default: $PRISM_ADMIN or 127.0.0.1:50052)"
)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    # Accepted before and after the subcommand (`prism --log-level debug serve`, `prism serve
    # --log-level debug`): the subcommands' copy has no default, so it never hides the first.
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS if default is None else default,
        help="what to log on stderr (default: info)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description="Prism data-access proxy")
    parser.add_argument("--version", action="version", version=f"prism {prism.__version__}")
    _log_level_option(parser, "info")
    common = argparse.ArgumentParser(add_help=False)
    _log_level_option(common, None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy", parents=[common])
    serve.add_argument(
        "--config", type=Path, help="YAML config (default: embedded memstore + sqlite namespaces)"
    )
    serve.add_argument("--listen", help="host:port for the front door (overrides the config)")
    serve.add_argument(
        "--admin",
        help="admin API: loopback host:port, unix:/path, or off (overrides the config's admin)",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path("prism-data"),
        help="where the embedded default keeps its sqlite file",
    )

    config = sub.add_parser("config", help="config file tools", parents=[common]).add_subparsers(
        dest="config_command", required=True
    )
    check = config.add_parser(
        "check", help="validate a config file without starting anything (secrets are resolved)"
    )
    check.add_argument("file", type=Path)
    config.add_parser("schema", help="print the config file's JSON Schema (for editors)")

    plugin = sub.add_parser("plugin", help="plugin tools", parents=[common]).add_subparsers(
        dest="plugin_command", required=True
    )
    pserve = plugin.add_parser(
        "serve", help="serve a plugin as a remote service (TCP + mTLS)", parents=[common]
    )
    pserve.add_argument("plugin", help="entry point name or package.module:Class")
    pserve.add_argument("--listen", required=True, help="host:port")
    pserve.add_argument("--tls-cert", type=Path, required=True)
    pserve.add_argument("--tls-key", type=Path, required=True)
    pserve.add_argument(
        "--tls-client-ca",
        type=Path,
        required=True,
        help="CA that signed the proxy's client certificate (mTLS)",
    )
    pserve.add_argument(
        "--max-message-size",
        type=int,
        default=16 << 20,
        help="largest message in bytes, both ways; at least the proxy's max_message_size "
        "(default 16 MiB, the proxy's default)",
    )
    init = plugin.add_parser("init", help="scaffold a new plugin distribution", parents=[common])
    init.add_argument("name")
    init.add_argument("--directory", type=Path, default=None)

    def admin_command(name: str, help: str, timeout: float | None) -> argparse.ArgumentParser:
        cmd = plugin.add_parser(name, help=help, parents=[common])
        cmd.add_argument("--admin", default=admin.default_target(), help=ADMIN_HELP)
        cmd.add_argument(
            "--timeout",
            type=float,
            default=timeout,
            help="seconds to wait for the answer" + (" (default: no limit)" if not timeout else ""),
        )
        return cmd

    plist = admin_command("list", "namespaces, their plugins and instances", 10.0)
    plist.add_argument("--json", action="store_true", help="machine-readable output")
    status = admin_command("status", "one namespace's plugin, health and metrics", 10.0)
    status.add_argument("namespace")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    reload = admin_command("reload", "hot-reload a namespace's plugin", None)
    reload.add_argument("namespace")

    keygen = plugin.add_parser(
        "keygen", help="make an ed25519 key pair for signing plugins", parents=[common]
    )
    keygen.add_argument("out", type=Path, help="private key file (the public key: OUT.pub)")
    sign = plugin.add_parser(
        "sign", help="sign a plugin file or package directory", parents=[common]
    )
    sign.add_argument("path", type=Path, help="the plugin's module file or package directory")
    sign.add_argument("--key", type=Path, required=True, help="ed25519 private key (PEM)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            config = load_config(args.config) if args.config else default_config(args.data_dir)
            if args.listen:
                config = config.replace(listen=args.listen)
            if args.admin:
                config = config.replace(admin=admin_from_target(args.admin))
            trio.run(_serve, config)
        elif args.command == "config":
            _config_tool(args)
        elif args.plugin_command in ("list", "status", "reload", "keygen", "sign"):
            _plugin_tool(args)
        elif args.plugin_command == "serve":
            trio.run(_serve_plugin, args)
        elif args.plugin_command == "init":
            from prism.sdk.scaffold import scaffold

            try:
                path = scaffold(args.name, args.directory)
            except ValueError as exc:
                print(f"prism: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            print(f"created {path}; next: pip install -e {path} && pytest {path}")
    except* (ConfigError, PluginRefused, PluginStartFailed, ListenFailed) as group:
        # Startup errors are the operator's to fix: one clear line, no traceback.
        for leaf in _leaves(group):
            for line in leaf.errors if isinstance(leaf, ConfigError) else (str(leaf),):
                print(f"prism: {line}", file=sys.stderr)
        startup_failed = True
    else:
        startup_failed = False
    # Exit outside the except* block: Python before 3.11.4 (Debian 12 has 3.11.2) wraps an
    # exception raised in one into an exception group, which prints a traceback and exits 1.
    if startup_failed:
        raise SystemExit(2)


def _config_tool(args: argparse.Namespace) -> None:
    """``prism config check`` (exit 0 with a summary, or 1 with the errors) and ``schema``."""
    if args.config_command == "schema":
        sys.stdout.write(config_cli.schema())
        return
    status, lines = config_cli.check(args.file)
    if status == 0:
        print(*lines, sep="\n")
    else:
        for line in lines:
            print(f"prism: {line}", file=sys.stderr)
    raise SystemExit(status)


def _plugin_tool(args: argparse.Namespace) -> None:
    """The admin and key commands: output on stdout; errors as one line, exit 1."""
    try:
        if args.plugin_command == "list":
            command = partial(admin.list_namespaces, args.admin, as_json=args.json)
            out = admin.run(command, args.admin, args.timeout)
        elif args.plugin_command == "status":
            command = partial(admin.namespace_status, args.admin, args.namespace, as_json=args.json)
            out = admin.run(command, args.admin, args.timeout)
        elif args.plugin_command == "reload":
            command = partial(admin.reload_namespace, args.admin, args.namespace)
            out = admin.run(command, args.admin, args.timeout)
        elif args.plugin_command == "keygen":
            private, public = keys.keygen(args.out)
            out = f"wrote {private} (private, 0600) and {public} (public: add it to trusted_keys)"
        else:
            out = f"wrote {keys.sign(args.path, args.key)}"
    except admin.CliError as exc:
        print(f"prism: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None
    print(out)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _serve(config: ProxyConfig) -> None:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config).run)
        # What startup made (modules, plugins, config) lives as long as the process: frozen,
        # it is no longer scanned by every later garbage collection. On pub/sub fan-out that
        # was ~20% of the proxy's CPU per delivery (docs/benchmarks.md, "pubsub").
        gc.collect()
        gc.freeze()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info(
                    "%s: shutting down (grace %.0f s)",
                    signal.Signals(signum).name,
                    config.shutdown_grace,
                )
                await proxy.stop()
                return


async def _serve_plugin(args: argparse.Namespace) -> None:
    from prism.sdk.runner import serve_plugin

    cls = load_plugin_class(args.plugin)
    ctx = server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: serve_plugin(
                cls,
                listen=args.listen,
                ssl_context=ctx,
                max_message_size=args.max_message_size,
                task_status=task_status,
            )
        )
        log.info("plugin %s serving on %s (mTLS)", args.plugin, address)


if __name__ == "__main__":
    main()
