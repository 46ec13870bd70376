"""The fleet's commands: ``prism serve --config etcd://...`` (its start),
``prism config push FILE --etcd URL`` and ``prism fleet status --etcd URL``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from prism.config import ConfigError, ProxyConfig
from prism.etcd import EtcdClient, EtcdError, EtcdTarget, parse_target
from prism.fleet.members import Member, list_members
from prism.fleet.push import PushConflict, current_revision, push
from prism.fleet.source import EtcdConfigSource, read_initial

__all__ = [
    "CACHE_NAME",
    "add_fleet_parser",
    "add_push_parser",
    "fleet_command",
    "open_source",
    "push_command",
]

CACHE_NAME = "etcd-config-cache.json"
ETCD_HELP = "the fleet's etcd and key prefix: etcd://HOST:PORT/PREFIX (the config is PREFIX/config)"


def _target(url: str) -> EtcdTarget:
    try:
        return parse_target(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def open_source(
    url: str, cache: Path | None, data_dir: Path
) -> tuple[ProxyConfig, EtcdConfigSource]:
    """``prism serve --config etcd://...``: the config to start with (read from etcd, or from
    the cache when etcd is down) and the watch that keeps it current. ConfigError when there
    is nothing valid to start from."""
    target = _target(url)
    path = cache if cache is not None else data_dir / CACHE_NAME
    initial = trio.run(read_initial, target, path)
    return initial.config, EtcdConfigSource(target, path, initial)


def add_push_parser(config: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push_cmd = config.add_parser(
        "push",
        help="validate a config file and write it to the fleet's etcd key (no lost update)",
    )
    push_cmd.add_argument("file", type=Path)
    push_cmd.add_argument("--etcd", required=True, help=ETCD_HELP)
    push_cmd.add_argument(
        "--expect-revision",
        type=int,
        help="write only if the key's mod_revision is still this (default: the one read "
        "just before writing; 0: the key must not exist yet)",
    )


def push_command(args: argparse.Namespace) -> int:
    """Exit status: 0 pushed (or unchanged), 1 invalid file, etcd error or conflict."""
    try:
        target = _target(args.etcd)

        async def run() -> str:
            async with EtcdClient(target.endpoint) as client:
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
    status.add_argument("--json", action="store_true", help="machine-readable output")


def fleet_command(args: argparse.Namespace) -> int:
    """``prism fleet status``: exit 0 with the table (or JSON), 1 when etcd cannot be read."""
    try:
        target = _target(args.etcd)

        async def run() -> tuple[int, list[Member | str]]:
            async with EtcdClient(target.endpoint) as client:
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
