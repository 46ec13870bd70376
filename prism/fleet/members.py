"""Membership: each proxy whose config comes from etcd registers itself under
``PREFIX/members/<id>`` with a lease, and ``prism fleet status`` lists the fleet.

The record (JSON) says where the proxy listens, its version, the etcd revision of the config it
runs, and why the latest change was not applied (``last_error``). It is rewritten whenever one
of those changes. The lease (:data:`MEMBER_TTL` seconds) is renewed every third of its TTL; a
proxy that dies stops renewing it and its record vanishes with it. A proxy that stops cleanly
revokes it. When etcd is unreachable (or the lease was lost) a new lease is taken with the
config watch's capped backoff; the proxy serves meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

import prism
from prism.etcd import EtcdClient, EtcdError, EtcdTarget
from prism.fleet.limits import BACKOFF_MAX, BACKOFF_MIN, READ_DEADLINE

__all__ = ["MEMBER_TTL", "Member", "Membership", "list_members", "member_id"]

log = logging.getLogger("prism.fleet")

#: Seconds a dead proxy's record outlives it.
MEMBER_TTL = 10


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    address: str
    version: str
    pid: int
    config_revision: int
    last_error: str | None
    started_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "version": self.version,
            "pid": self.pid,
            "config_revision": self.config_revision,
            "last_error": self.last_error,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Member:
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return cls(
            id=str(raw["id"]),
            address=str(raw["address"]),
            version=str(raw.get("version", "")),
            pid=int(raw.get("pid", 0)),
            config_revision=int(raw.get("config_revision", 0)),
            last_error=None if raw.get("last_error") is None else str(raw["last_error"]),
            started_at=float(raw.get("started_at", 0)),
            updated_at=float(raw.get("updated_at", 0)),
        )


def member_id(address: tuple[str, int] | None) -> str:
    """``HOSTNAME:PORT`` of the front door: unique per proxy in a fleet."""
    port = address[1] if address is not None else os.getpid()
    return f"{socket.gethostname()}:{port}"


class Membership:
    """One proxy's record (module docstring). ``state()`` gives the record's changing fields
    (applied config revision, last error); ``changed()`` returns when they change."""

    def __init__(
        self,
        target: EtcdTarget,
        member: str,
        address: str,
        state: Callable[[], tuple[int, str | None]],
        changed: Callable[[], Awaitable[None]],
        *,
        ttl: int = MEMBER_TTL,
    ) -> None:
        self.target = target
        self.key = target.members_prefix + member
        self.member = member
        self.address = address
        self.ttl = ttl
        self._state = state
        self._changed = changed
        self._started_at = time.time()

    def record(self) -> Member:
        revision, error = self._state()
        return Member(
            self.member,
            self.address,
            prism.__version__,
            os.getpid(),
            revision,
            error,
            self._started_at,
            time.time(),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the record in etcd until cancelled; then revoke its lease (within a grace)."""
        task_status.started()
        delay = BACKOFF_MIN
        async with self.target.client() as client:
            while True:
                lease = 0
                try:
                    with trio.fail_after(READ_DEADLINE):
                        lease = await client.lease_grant(self.ttl)
                        published = await self._publish(client, lease)
                    log.info("registered as %s (lease %x, %d s)", self.key, lease, self.ttl)
                    delay = BACKOFF_MIN
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._keepalive, client, lease)
                        nursery.start_soon(self._republish, client, lease, published)
                except* (EtcdError, trio.TooSlowError) as group:
                    reason = str(group.exceptions[0]) or "etcd did not answer"
                    log.warning("membership %s: %s; registering again", self.key, reason)
                    await trio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                finally:
                    if lease:
                        with trio.move_on_after(READ_DEADLINE / 5, shield=True):
                            with contextlib.suppress(EtcdError):  # it expires by itself
                                await client.lease_revoke(lease)

    async def _publish(self, client: EtcdClient, lease: int) -> tuple[int, str | None]:
        """Write the record as it is now; the state it holds."""
        record = self.record()
        await client.put(self.key, json.dumps(record.to_json(), sort_keys=True), lease=lease)
        return record.config_revision, record.last_error

    async def _keepalive(self, client: EtcdClient, lease: int) -> None:
        while True:
            await trio.sleep(self.ttl / 3)
            with trio.fail_after(READ_DEADLINE):
                await client.lease_keepalive(lease)

    async def _republish(
        self, client: EtcdClient, lease: int, published: tuple[int, str | None]
    ) -> None:
        # Compared with what was written rather than woken per change: a change made while
        # a write (or the registration) was under way has no waiter to wake, and would stay
        # unpublished until the next one.
        while True:
            if self._state() == published:
                await self._changed()
                continue
            with trio.fail_after(READ_DEADLINE):
                published = await self._publish(client, lease)


async def list_members(client: EtcdClient, target: EtcdTarget) -> list[Member | str]:
    """The fleet's records, by id; a record that does not read is its key (as text)."""
    with trio.fail_after(READ_DEADLINE):
        result = await client.range(target.members_prefix, prefix=True)
    members: list[Member | str] = []
    for kv in result.kvs:
        try:
            members.append(Member.from_json(json.loads(kv.value)))
        except (ValueError, KeyError, TypeError):
            members.append(kv.key.decode("utf-8", "backslashreplace"))
    return members
