"""The fleet's commands: ``prism serve --config etcd://...`` (its start),
``prism config push FILE --etcd URL`` and ``prism fleet status --etcd URL``."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from pathlib import Path

import trio

from prism.config import ConfigError, ProxyConfig
from prism.config.secrets import Reference, SecretsConfig, parse_credential, resolve_credentials
from prism.etcd import EtcdAccess, EtcdError, EtcdTarget, parse_target
from prism.fleet.members import Member, list_members
from prism.fleet.push import PushConflict, current_revision, push
from prism.fleet.source import EtcdConfigSource, read_initial

__all__ = [
    "CACHE_NAME",
    "add_access_options",
    "add_fleet_parser",
    "add_push_parser",
    "fleet_command",
    "open_source",
    "push_command",
]

CACHE_NAME = "etcd-config-cache.json"
ETCD_HELP = "the fleet's etcd and key prefix: etcd://HOST:PORT/PREFIX (the config is PREFIX/config)"


_PASSWORD_HELP = (
    "etcd auth password, as a reference only: {{ secret:NAME }}, {{ file:PATH }} or "
    "{{ env:NAME }} (a password on the command line would be visible to every user of the host)"
)


def add_access_options(parser: argparse.ArgumentParser) -> None:
    """How to reach a secured etcd (TLS, auth): the same options on every etcd command."""
    parser.add_argument("--etcd-cacert", type=Path, help="CA bundle for an https:// etcd")
    parser.add_argument("--etcd-cert", type=Path, help="client certificate for etcd (mTLS)")
    parser.add_argument("--etcd-key", type=Path, help="the client certificate's key")
    parser.add_argument("--etcd-user", help="etcd auth user (with --etcd-password)")
    parser.add_argument("--etcd-password", metavar="REFERENCE", help=_PASSWORD_HELP)
    parser.add_argument(
        "--etcd-secrets-dir",
        type=Path,
        help="where {{ secret:NAME }} in --etcd-password is looked up (a file per secret), "
        "before the environment variable PRISM_SECRET_NAME",
    )


def _password(args: argparse.Namespace) -> str | None:
    text: str | None = getattr(args, "etcd_password", None)
    if text is None:
        return None
    try:
        parts = parse_credential(text)
    except ValueError as exc:
        raise ConfigError(f"--etcd-password: {exc}") from None
    if len(parts) != 1 or not isinstance(parts[0], Reference):
        raise ConfigError(f"--etcd-password: not a reference; {_PASSWORD_HELP}")
    secrets = SecretsConfig(directory=getattr(args, "etcd_secrets_dir", None))
    return resolve_credentials({"password": text}, secrets, where="--etcd")["password"]


def _target(url: str, args: argparse.Namespace | None = None) -> EtcdTarget:
    try:
        target = parse_target(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args is None:
        return target
    access = EtcdAccess(
        ca=getattr(args, "etcd_cacert", None),
        cert=getattr(args, "etcd_cert", None),
        key=getattr(args, "etcd_key", None),
        user=getattr(args, "etcd_user", None),
        password=_password(args),
    )
    if (access.user is None) != (access.password is None):
        raise ConfigError("--etcd-user and --etcd-password go together")
    if (access.ca or access.cert) and not target.endpoint.startswith("https://"):
        raise ConfigError("--etcd-cacert and --etcd-cert need an https:// etcd URL")
    if (access.cert is None) != (access.key is None):
        raise ConfigError("--etcd-cert and --etcd-key go together")
    if target.endpoint.startswith("https://"):
        try:  # the files are read now: a wrong path is a start error, not a retry loop
            access.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"etcd TLS files (--etcd-cacert, --etcd-cert): {reason}") from None
    return EtcdTarget(target.endpoint, target.prefix, access)


def open_source(
    url: str,
    cache: Path | None,
    data_dir: Path,
    args: argparse.Namespace | None = None,
) -> tuple[ProxyConfig, EtcdConfigSource]:
    """``prism serve --config etcd://...``: the config to start with (read from etcd, or from
    the cache when etcd is down) and the watch that keeps it current. ConfigError when there
    is nothing valid to start from. ``args``: the serve command's etcd options (access,
    ``--member-id``)."""
    target = _target(url, args)
    path = cache if cache is not None else data_dir / CACHE_NAME
    initial = trio.run(read_initial, target, path)
    member = getattr(args, "member_id", None)
    return initial.config, EtcdConfigSource(target, path, initial, member=member)


def add_push_parser(config: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push_cmd = config.add_parser(
        "push",
        help="validate a config file and write it to the fleet's etcd key (no lost update)",
    )
    push_cmd.add_argument("file", type=Path)
    push_cmd.add_argument("--etcd", required=True, help=ETCD_HELP)
    add_access_options(push_cmd)
    push_cmd.add_argument(
        "--expect-revision",
        type=int,
        help="write only if the key's mod_revision is still this (default: the one read "
        "just before writing; 0: the key must not exist yet)",
    )


def push_command(args: argparse.Namespace) -> int:
    """Exit status: 0 pushed (or unchanged), 1 invalid file, etcd error or conflict."""
    try:
        target = _target(args.etcd, args)

        async def run() -> str:
            async with target.client() as client:
                pushed = await push(client, target, args.file, expect_revision=args.expect_revision)
            if pushed.unchanged:
                return f"{args.file}: unchanged at etcd key {pushed.key} revision {pushed.revision}"
            was = f"revision {pushed.previous}" if pushed.previous else "new key"
            return (
                f"{args.file}: valid; written to etcd key {pushed.key} at revision "
                f"{pushed.revision} (was {was})"
            )

        print(trio.run(run))
    except ConfigError as exc:
        for line in exc.errors:
            print(f"prism: {line}", file=sys.stderr)
        return 1
    except (EtcdError, PushConflict) as exc:
        print(f"prism: {exc}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        print(f"prism: etcd at {target.endpoint} did not answer", file=sys.stderr)
        return 1
    return 0


def add_fleet_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    fleet = sub.add_parser("fleet", help="the fleet of proxies on etcd", parents=[common])
    commands = fleet.add_subparsers(dest="fleet_command", required=True)
    status = commands.add_parser(
        "status", help="the proxies registered in etcd and the config revision each runs"
    )
    status.add_argument("--etcd", required=True, help=ETCD_HELP)
    add_access_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")


def fleet_command(args: argparse.Namespace) -> int:
    """``prism fleet status``: exit 0 with the table (or JSON), 1 when etcd cannot be read."""
    try:
        target = _target(args.etcd, args)

        async def run() -> tuple[int, list[Member | str]]:
            async with target.client() as client:
                revision, _ = await current_revision(client, target)
                return revision, await list_members(client, target)

        revision, members = trio.run(run)
    except ConfigError as exc:
        print(f"prism: {exc}", file=sys.stderr)
        return 1
    except EtcdError as exc:
        print(f"prism: {exc}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        print(f"prism: etcd at {target.endpoint} did not answer", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "config_key": target.config_key,
                    "config_revision": revision,
                    "members": [m.to_json() for m in members if isinstance(m, Member)],
                    "unreadable": [m for m in members if isinstance(m, str)],
                },
                indent=2,
            )
        )
        return 0
    print(*status_lines(target, revision, members), sep="\n")
    return 0


def status_lines(target: EtcdTarget, revision: int, members: list[Member | str]) -> list[str]:
    head = f"config: etcd key {target.config_key} at revision {revision or '- (none)'}"
    if not members:
        return [head, "no proxy is registered"]
    rows = [("ID", "ADDRESS", "VERSION", "CONFIG", "LAST ERROR")]
    for m in members:
        if isinstance(m, str):
            rows.append((m, "?", "?", "?", "unreadable record"))
            continue
        config = str(m.config_revision) + ("" if m.config_revision == revision else " (behind)")
        rows.append((m.id, m.address, m.version, config, m.last_error or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [head]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + row[4]
        )
    return lines
