"""``prism config push FILE --etcd URL``: validate a config file, then write it to the fleet's
key with a compare on the revision it was based on, so that two operators pushing at once never
lose an update: the second push fails and says so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from prism.config import ConfigError
from prism.etcd import Compare, EtcdClient, EtcdTarget, Put
from prism.fleet.limits import READ_DEADLINE
from prism.fleet.source import validate

__all__ = ["PushConflict", "Pushed", "current_revision", "push"]


class PushConflict(Exception):
    """The key changed after the revision the push was based on; nothing was written."""


@dataclass(frozen=True, slots=True)
class Pushed:
    key: str
    revision: int  # the document's new mod_revision (== previous when unchanged)
    previous: int  # 0: the key did not exist
    unchanged: bool


async def current_revision(client: EtcdClient, target: EtcdTarget) -> tuple[int, bytes | None]:
    """The config key's mod_revision (0 when absent) and its value."""
    with trio.fail_after(READ_DEADLINE):
        result = await client.range(target.config_key)
    if not result.kvs:
        return 0, None
    return result.kvs[0].mod_revision, result.kvs[0].value


async def push(
    client: EtcdClient, target: EtcdTarget, file: Path, *, expect_revision: int | None = None
) -> Pushed:
    """Validate ``file`` (ConfigError), then write it if the key's mod_revision is still
    ``expect_revision`` (default: the one read here first); PushConflict if it is not.
    EtcdError when etcd cannot be reached or refuses."""
    try:
        data = await trio.to_thread.run_sync(file.read_bytes)
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror}") from None
    await trio.to_thread.run_sync(validate, data, str(file))
    key = target.config_key
    previous, value = await current_revision(client, target)
    based_on = previous if expect_revision is None else expect_revision
    if value == data and previous == based_on:
        return Pushed(key, previous, previous, unchanged=True)
    with trio.fail_after(READ_DEADLINE):
        result = await client.txn([Compare(key, based_on)], [Put(key, data)], [key])
    if not result.succeeded:
        now = result.kvs[0].mod_revision if result.kvs else 0
        raise PushConflict(
            f"etcd key {key} changed since revision {based_on} (now "
            + (f"revision {now}" if now else "deleted")
            + "): another push came first; nothing was written. Check what is there and push "
            "again."
        )
    return Pushed(key, result.revision, based_on, unchanged=False)
