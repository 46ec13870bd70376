"""The ``prism`` command."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from pathlib import Path

import trio

import prism
from prism import grpc as pg
from prism import logsetup
from prism.cli import admin, install, keys
from prism.cli import config as config_cli
from prism.cli import fleet as fleet_cli
from prism.config import (
    ConfigError,
    ProxyConfig,
    admin_from_target,
    default_config,
    load_config,
)
from prism.etcd import is_etcd_url
from prism.fleet.source import EtcdConfigSource
from prism.grpc.transport import server_ssl_context
from prism.hosting.host import PluginStartFailed
from prism.hosting.loader import load_plugin_class
from prism.hosting.verify import PluginRefused
from prism.proxy.adminaudit import record_admin
from prism.proxy.adminauth import AdminCaller
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
        help="what to log on stderr (default: info, or prism serve's config logging.level)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description="Prism data-access proxy")
    parser.add_argument("--version", action="version", version=f"prism {prism.__version__}")
    _log_level_option(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _log_level_option(common, None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy", parents=[common])
    serve.add_argument(
        "--config",
        help="YAML config file, or etcd://HOST:PORT/PREFIX to read (and watch) the fleet's "
        "config in etcd (default: embedded memstore + sqlite namespaces)",
    )
    serve.add_argument(
        "--config-cache",
        type=Path,
        help="with --config etcd://...: where the last good config is cached (0600), to start "
        f"from while etcd is down (default: DATA_DIR/{fleet_cli.CACHE_NAME})",
    )
    serve.add_argument(
        "--member-id",
        help="with --config etcd://...: this proxy's id in the fleet's membership records "
        "(default: HOSTNAME:PORT of the front door)",
    )
    fleet_cli.add_access_options(serve)
    serve.add_argument("--listen", help="host:port for the front door (overrides the config)")
    serve.add_argument(
        "--admin",
        help="admin API: loopback host:port, unix:/path, or off (overrides the config's admin)",
    )
    serve.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        help="log lines on stderr: JSON objects, text, or auto: JSON unless stderr is a "
        "terminal (default: the config's logging.format, auto)",
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
    fleet_cli.add_push_parser(config)
    creload = config.add_parser(
        "reload", help="make a running proxy re-read its config file (as SIGHUP does)"
    )
    _admin_options(creload, None)
    creload.add_argument("--json", action="store_true", help="machine-readable output")

    fleet_cli.add_fleet_parser(sub, common)
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
        _admin_options(cmd, timeout)
        return cmd

    plist = admin_command("list", "namespaces, their plugins and instances", 10.0)
    plist.add_argument("--json", action="store_true", help="machine-readable output")
    status = admin_command("status", "one namespace's plugin, health and metrics", 10.0)
    status.add_argument("namespace")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    reload = admin_command("reload", "hot-reload a namespace's plugin", None)
    reload.add_argument("namespace")
    enable = admin_command("enable", "start a disabled namespace's plugin again", None)
    enable.add_argument("namespace")
    disable = admin_command(
        "disable",
        "stop a namespace: its plugin is drained and stopped, calls get UNAVAILABLE",
        None,
    )
    disable.add_argument("namespace")

    inst = plugin.add_parser(
        "install",
        help="install a plugin distribution (NAME[==VERSION] or PATH.whl) into its own venv",
        parents=[common],
    )
    inst.add_argument("spec", help="NAME, NAME==VERSION or a wheel file")
    _install_options(inst)
    upd = admin_command(
        "update", "install a plugin's new version and hot-reload its sidecars", None
    )
    upd.add_argument("name", help="the plugin's distribution name")
    upd.add_argument("--wheel", type=Path, help="install this wheel file instead of the index's")
    _install_options(upd)

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


def _admin_options(cmd: argparse.ArgumentParser, timeout: float | None) -> None:
    cmd.add_argument("--admin", default=admin.default_target(), help=ADMIN_HELP)
    cmd.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help="seconds to wait for the answer" + (" (default: no limit)" if not timeout else ""),
    )
    cmd.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the admin token (admin.token; default: ${admin.TOKEN_ENV})",
    )
    cmd.add_argument("--cacert", type=Path, help="CA of an admin.tls port's certificate (TLS)")
    cmd.add_argument("--cert", type=Path, help="client certificate, for admin.tls.client_ca")
    cmd.add_argument("--key", type=Path, help="the client certificate's key")


def _install_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--plugins-dir",
        type=Path,
        default=None,
        help=f"where plugin venvs live (default: ${install.PLUGINS_DIR_ENV} or ./prism-plugins)",
    )
    cmd.add_argument(
        "--config", type=Path, help="the proxy's config: verify with its plugin_security"
    )
    cmd.add_argument("--index-url", help="package index (pip's --index-url)")
    cmd.add_argument("--find-links", help="directory of wheels (pip's --find-links)")
    cmd.add_argument("--no-index", action="store_true", help="do not use a package index")


def _install(args: argparse.Namespace, spec: str, *, upgrade: bool) -> install.Installed:
    security = load_config(args.config).plugin_security if args.config else None
    index: list[str] = []
    if args.index_url:
        index += ["--index-url", args.index_url]
    if args.find_links:
        index += ["--find-links", args.find_links]
    if args.no_index:
        index.append("--no-index")
    plugins_dir = args.plugins_dir or install.default_plugins_dir()
    return install.install(spec, plugins_dir, security, upgrade=upgrade, index_args=tuple(index))


def _plugin_install(args: argparse.Namespace) -> None:
    """``install`` and ``update``: one line per step on stdout; errors as one line, exit 1."""
    try:
        if args.plugin_command == "install":
            installed = _install(args, args.spec, upgrade=False)
            print(*install.describe(installed), sep="\n")
            return
        target = _admin_of(args)
        installed = _install(args, str(args.wheel or args.name), upgrade=True)
        print(install.describe(installed)[0])
        failed: list[str] = []
        command = partial(
            admin.update_namespaces, target, installed.plugins, installed.version, failed
        )
        print(admin.run(command, target, args.timeout))
        if failed and installed.previous is not None:
            install.point_current(installed, installed.previous)
            print(f"{installed.current} -> {installed.previous} again (the reload failed)")
            raise SystemExit(1)
    except (install.InstallError, admin.CliError) as exc:
        print(f"prism: {exc}", file=sys.stderr)
        raise SystemExit(getattr(exc, "code", 1)) from None


def _admin_of(args: argparse.Namespace) -> admin.Admin:
    return admin.Admin.from_options(args.admin, args.token_file, args.cacert, args.cert, args.key)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    log_level: str | None = getattr(args, "log_level", None)
    log_format: str | None = getattr(args, "log_format", None)
    logsetup.configure(log_format or "auto", log_level or "info")
    try:
        if args.command == "serve":
            overrides = partial(_serve_overrides, args, log_format, log_level)
            path, source = None, None
            if args.config and is_etcd_url(args.config):
                config, source = fleet_cli.open_source(
                    args.config, args.config_cache, args.data_dir, args
                )
            elif args.config:
                path = Path(args.config)
                config = load_config(path)
            else:
                config = default_config(args.data_dir)
            # The command line wins over the file; the file over the defaults.
            config = overrides(config)
            logsetup.configure(config.logging.format, config.logging.level)
            trio.run(_serve, config, path, overrides, source)
        elif args.command == "config":
            _config_tool(args)
        elif args.command == "fleet":
            raise SystemExit(fleet_cli.fleet_command(args))
        elif args.plugin_command in (
            "list",
            "status",
            "reload",
            "enable",
            "disable",
            "keygen",
            "sign",
        ):
            _plugin_tool(args)
        elif args.plugin_command in ("install", "update"):
            _plugin_install(args)
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
    if args.config_command == "push":
        raise SystemExit(fleet_cli.push_command(args))
    if args.config_command == "reload":
        try:
            target = _admin_of(args)
            command = partial(admin.reload_config, target, as_json=args.json)
            print(admin.run(command, target, args.timeout))
        except admin.CliError as exc:
            print(f"prism: {exc}", file=sys.stderr)
            raise SystemExit(exc.code) from None
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
            target = _admin_of(args)
            command = partial(admin.list_namespaces, target, as_json=args.json)
            out = admin.run(command, target, args.timeout)
        elif args.plugin_command == "status":
            target = _admin_of(args)
            command = partial(admin.namespace_status, target, args.namespace, as_json=args.json)
            out = admin.run(command, target, args.timeout)
        elif args.plugin_command == "reload":
            target = _admin_of(args)
            command = partial(admin.reload_namespace, target, args.namespace)
            out = admin.run(command, target, args.timeout)
        elif args.plugin_command in ("enable", "disable"):
            target = _admin_of(args)
            enabled = args.plugin_command == "enable"
            command = partial(admin.set_enabled, target, args.namespace, enabled=enabled)
            out = admin.run(command, target, args.timeout)
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


def _serve_overrides(
    args: argparse.Namespace, log_format: str | None, log_level: str | None, config: ProxyConfig
) -> ProxyConfig:
    """``config`` with what ``prism serve``'s options override (also applied to the file a
    config reload reads, so an overridden field never reads as changed)."""
    if log_format or log_level:
        config = config.replace(
            logging=config.logging.replace(
                format=log_format or config.logging.format, level=log_level or config.logging.level
            )
        )
    if args.listen:
        config = config.replace(listen=args.listen)
    if args.admin:
        # --admin moves the listener; who may call stays as the file says.
        override = admin_from_target(args.admin).replace(
            token=config.admin.token, anonymous_read=config.admin.anonymous_read
        )
        config = config.replace(admin=override)
    return config


async def _serve(
    config: ProxyConfig,
    path: Path | None = None,
    overrides: Callable[[ProxyConfig], ProxyConfig] | None = None,
    source: EtcdConfigSource | None = None,
) -> None:
    # SIGHUP's receiver is in place before the proxy starts: a SIGHUP that arrives while it
    # starts would otherwise end the process (the signal's default action). It is handled
    # once the proxy runs. SIGINT and SIGTERM keep their default until then: they stop a start.
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async with trio.open_nursery() as nursery:
            proxy = Proxy(config, config_path=path, overrides=overrides)
            await nursery.start(proxy.run)
            if source is not None:  # config from etcd: its watch
                await nursery.start(source.run, proxy)
            # What startup made (modules, plugins, config) lives as long as the process:
            # frozen, it is no longer scanned by every later garbage collection. On pub/sub
            # fan-out that was ~20% of the proxy's CPU per delivery (docs/benchmarks.md).
            gc.collect()
            gc.freeze()
            nursery.start_soon(_reload_on_sighup, hangups, proxy, nursery)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info(
                        "%s: shutting down (grace %.0f s)",
                        signal.Signals(signum).name,
                        config.shutdown_grace,
                    )
                    await proxy.stop()
                    nursery.cancel_scope.cancel()  # the SIGHUP task: nothing left to reload
                    return


async def _reload_on_sighup(
    hangups: AsyncIterator[int], proxy: Proxy, nursery: trio.Nursery
) -> None:
    async for _ in hangups:
        nursery.start_soon(_reload_config, proxy)


async def _reload_config(proxy: Proxy) -> None:
    """SIGHUP: the result is logged (by the reload); a rejected file leaves the old running."""
    caller = AdminCaller("signal:SIGHUP", "local")
    try:
        await proxy.reload_config()
    except pg.FailedPrecondition as exc:
        log.error("SIGHUP: %s", exc.message)
        record_admin("config-reload", "", caller, exc.status.name)
    else:
        record_admin("config-reload", "", caller, "OK")


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
                freeze_gc=True,
                task_status=task_status,
            )
        )
        shown = str(address)
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("plugin %s serving on %s (mTLS)", args.plugin, shown)


if __name__ == "__main__":
    main()
