"""Config from etcd: ``prism serve --config etcd://HOST:PORT/PREFIX``.

The config document is the value at ``PREFIX/config``: YAML or JSON text, as a file would hold
it. At start (:func:`read_initial`) it is read and validated as a file is (every field, every
secret it references, ``admin.token``), and the good text is cached on disk
(:mod:`prism.fleet.cache`). When etcd cannot be reached, the proxy starts from that cache.

Then :meth:`EtcdConfigSource.run` watches the key from the read's revision + 1. Each change
goes through the same validate → hot-reload path as a file reload
(:meth:`ConfigReloader.apply <prism.proxy.configreload.ConfigReloader.apply>`): a bad change
is rejected and logged, and the running configuration keeps serving. Several changes in one
watch response are applied as one (the last). A watch that breaks resumes from the last
revision seen + 1, so no change is missed and none is applied twice; a compacted revision
triggers a full re-read. While etcd is unreachable the proxy keeps serving and retries with
capped exponential backoff (:mod:`prism.fleet.limits`: 0.1 s doubling up to 5 s). Deleting
the key is logged and changes nothing. A reload (SIGHUP, ``prism config reload``, the admin
API) re-reads the key and applies it again (secrets are read again: rotation). The proxy also
registers itself in the fleet's membership (:mod:`prism.fleet.members`).

Relative paths in the document are taken from the proxy's working directory.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from prism.config import ConfigError, ProxyConfig
from prism.config.admin import resolve_admin_token
from prism.config.load import load_config_text
from prism.etcd import EtcdClient, EtcdError, EtcdTarget, EtcdUnavailable, KeyValue, WatchCompacted
from prism.fleet.cache import CachedConfig, read_cache, write_cache
from prism.fleet.limits import BACKOFF_MAX, BACKOFF_MIN, READ_DEADLINE
from prism.fleet.members import Membership, member_id
from prism.proxy.configreload import ConfigRejected, ReloadResult, revision_of

if TYPE_CHECKING:
    from prism.proxy.app import Proxy

__all__ = ["EtcdConfigSource", "Initial", "read_initial", "validate"]

log = logging.getLogger("prism.fleet")


@dataclass(frozen=True, slots=True)
class Initial:
    """The config a proxy starts with: ``mod_revision`` is the document's, ``watch_from`` the
    revision the watch starts at; ``from_cache`` when etcd could not be reached."""

    config: ProxyConfig
    data: bytes
    mod_revision: int
    watch_from: int
    from_cache: bool


def validate(data: bytes, source: str) -> ProxyConfig:
    """``data`` validated as a config file is; ConfigError lists the problems (no secret)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text") from None
    config = load_config_text(text, source=source, base=Path.cwd())
    resolve_admin_token(config.admin, config.secrets)
    return config


async def read_initial(target: EtcdTarget, cache: Path) -> Initial:
    """The config at ``target``, validated and cached; the cache's when etcd is unreachable.
    ConfigError when there is none to start from, or it is invalid."""
    key = target.config_key
    try:
        async with target.client() as client:
            with trio.fail_after(READ_DEADLINE):
                result = await client.range(key)
    except (EtcdUnavailable, trio.TooSlowError) as exc:
        reason = str(exc) or f"etcd at {target.endpoint} did not answer in {READ_DEADLINE} s"
        try:
            cached = await trio.to_thread.run_sync(read_cache, cache, key)
        except ValueError as why:
            raise ConfigError(f"{reason}; and {why}") from None
        config = await trio.to_thread.run_sync(validate, cached.data, f"config cache {cache}")
        log.warning(
            "%s; starting from the cached config (etcd revision %d, %s)",
            reason,
            cached.mod_revision,
            cache,
        )
        return Initial(config, cached.data, cached.mod_revision, cached.mod_revision + 1, True)
    except EtcdError as exc:
        raise ConfigError(str(exc)) from None
    if not result.kvs:
        raise ConfigError(
            f"no config at etcd key {key} ({target.endpoint}): write one with "
            f"prism config push FILE --etcd {target}"
        )
    kv = result.kvs[0]
    config = await trio.to_thread.run_sync(validate, kv.value, _source(target, kv))
    await trio.to_thread.run_sync(write_cache, cache, CachedConfig(key, kv.mod_revision, kv.value))
    return Initial(config, kv.value, kv.mod_revision, result.revision + 1, False)


def _source(target: EtcdTarget, kv: KeyValue) -> str:
    return f"etcd key {target.config_key} revision {kv.mod_revision}"


class EtcdConfigSource:
    """The watch of a proxy's config key (module docstring). ``applied_revision``: the etcd
    revision of the document running; ``last_error``: why the latest change was not applied
    (None once one is); ``etcd_error``: why etcd cannot be watched right now (None when it
    can). ``member``: its id in the fleet's membership (default ``HOSTNAME:PORT``)."""

    def __init__(
        self,
        target: EtcdTarget,
        cache: Path,
        initial: Initial,
        *,
        register: bool = True,
        member: str | None = None,
    ) -> None:
        self.target = target
        self.register = register
        self.member = member
        self.cache = cache
        self.applied_revision = initial.mod_revision
        self.last_error: str | None = None
        self.etcd_error: str | None = None
        self._seen = initial.mod_revision
        self._next = initial.watch_from
        self._initial = initial
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._client: EtcdClient | None = None

    async def changed(self) -> None:
        """Returns at the next change of the fields above (membership republishes then)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(
        self,
        proxy: Proxy,
        *,
        task_status: trio.TaskStatus[EtcdConfigSource] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch the key and apply its changes to ``proxy`` until cancelled. Cancellation
        closes the watch; a change being applied stops where it is (as a reload does)."""
        reloader = proxy.reloader
        reloader.source = (
            f"etcd://{self.target.endpoint.split('://', 1)[1]}{self.target.config_key}"
        )
        reloader.revision = revision_of(self._initial.data)
        async with self.target.client() as client, trio.open_nursery() as nursery:
            self._client = client
            reloader.reread = partial(self.reread, proxy)
            if self.register:
                address = "{}:{}".format(*proxy.address) if proxy.address else ""
                membership = Membership(
                    self.target,
                    self.member or member_id(proxy.address),
                    address,
                    self._member_state,
                    self.changed,
                )
                await nursery.start(membership.run)
            task_status.started(self)
            await self._watch(client, proxy)

    def _member_state(self) -> tuple[int, str | None]:
        return self.applied_revision, self.last_error

    async def _watch(self, client: EtcdClient, proxy: Proxy) -> None:
        key = self.target.config_key
        delay = BACKOFF_MIN
        while True:
            try:
                async with client.watch(key, start_revision=self._next) as batches:
                    if self.etcd_error is not None:
                        log.info("etcd watch of %s resumed from revision %d", key, self._next)
                        self.etcd_error = None
                        self._notify()
                    delay = BACKOFF_MIN
                    async for batch in batches:
                        latest = batch.events[-1]
                        if latest.type == "delete":
                            log.warning(
                                "etcd key %s deleted (revision %d): the running configuration "
                                "keeps serving",
                                key,
                                latest.kv.mod_revision,
                            )
                        else:
                            await self._offer(proxy, latest.kv)
                        self._next = max(self._next, latest.kv.mod_revision + 1)
            except WatchCompacted as exc:
                log.warning("%s: reading %s again", exc, key)
                try:
                    with trio.fail_after(READ_DEADLINE):
                        result = await client.range(key)
                except (EtcdError, trio.TooSlowError) as err:
                    await self._unreachable(err, delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                if result.kvs:
                    await self._offer(proxy, result.kvs[0])
                self._next = result.revision + 1
            except EtcdError as exc:
                await self._unreachable(exc, delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _unreachable(self, exc: BaseException, delay: float) -> None:
        reason = str(exc) or "etcd did not answer"
        if self.etcd_error != reason:
            log.warning(
                "%s; retrying (the running configuration keeps serving, etcd revision %d)",
                reason,
                self.applied_revision,
            )
            self.etcd_error = reason
            self._notify()
        await trio.sleep(delay)

    async def _offer(self, proxy: Proxy, kv: KeyValue) -> None:
        """Apply ``kv`` unless a revision this new was already seen (never twice)."""
        async with self._lock:
            if kv.mod_revision <= self._seen:
                return
            self._seen = kv.mod_revision
            # Rejected: logged by _apply; the running configuration keeps serving.
            with contextlib.suppress(ConfigRejected):
                await self._apply(proxy, kv)

    async def reread(self, proxy: Proxy) -> ReloadResult:
        """A reload asked for (SIGHUP, admin): read the key and apply it, even unchanged.
        ConfigRejected when it is invalid or etcd cannot be read."""
        client, key = self._client, self.target.config_key
        assert client is not None
        async with self._lock:
            try:
                with trio.fail_after(READ_DEADLINE):
                    result = await client.range(key)
            except (EtcdError, trio.TooSlowError) as exc:
                raise ConfigRejected([str(exc) or f"etcd did not answer for {key}"]) from None
            if not result.kvs:
                raise ConfigRejected([f"no config at etcd key {key}"])
            kv = result.kvs[0]
            self._seen = max(self._seen, kv.mod_revision)
            return await self._apply(proxy, kv)

    async def _apply(self, proxy: Proxy, kv: KeyValue) -> ReloadResult:
        source = _source(self.target, kv)
        try:
            config = await trio.to_thread.run_sync(validate, kv.value, source)
            result = await proxy.reloader.apply(config, kv.value)
        except (ConfigError, ConfigRejected) as exc:
            errors = list(exc.errors)
            log.error(
                "%s rejected; the running configuration (etcd revision %d) keeps serving: %s",
                source,
                self.applied_revision,
                "; ".join(errors),
            )
            self.last_error = f"revision {kv.mod_revision} rejected: " + "; ".join(errors)
            self._notify()
            raise ConfigRejected(errors) from None
        entry = CachedConfig(self.target.config_key, kv.mod_revision, kv.value)
        try:
            await trio.to_thread.run_sync(write_cache, self.cache, entry)
        except OSError as exc:
            log.warning("cannot write the config cache %s: %s", self.cache, exc.strerror)
        self.applied_revision = kv.mod_revision
        self.last_error = "; ".join(f"failed {item}" for item in result.failed) or None
        log.info("etcd key %s revision %d applied", self.target.config_key, kv.mod_revision)
        self._notify()
        return result
