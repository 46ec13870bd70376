"""Config reload: re-read the proxy's file (SIGHUP, ``prism config reload``, the admin API) and
apply what changed while the proxy keeps serving.

A file that does not validate (``prism.config.load_config``: every field, every secret it
references, ``admin.token``) is rejected with its errors and nothing changes. Otherwise, per
namespace, all at once: an added one starts (and is routed to once healthy), a removed one is
taken out of routing, drained and stopped, a changed one (its section differs, or a secret its
credentials reference now reads differently: rotation is "write the file, reload") goes
through hot reload (the old instance serves until the new one is healthy), an unchanged one is
left alone. A new instance that fails to start leaves that namespace as it was (and is
reported); the others are applied.

The authentication stage is rebuilt when ``auth`` changes (or whether some namespace admits
anonymous callers does): the new one's JWKS URL is fetched first, then calls go to it and the
old one's background refresh stops (:func:`replace_authenticator`). ``auth.mtls.required`` is
bound into the TLS listener: changing it needs a restart.

Only ``namespaces``, ``secrets``, ``shutdown_grace`` and ``auth`` change live. Every other
top-level field (listeners, TLS, admin, the other call-level stages' sections, limits, plugin
security) is bound into sockets and stages built at start: a change to one keeps the old
value, and the reload answers ``restart required for FIELD`` (the proxy does not refuse the
whole reload for it: the namespace changes in the same file still apply). ``admin.token``'s
secret is read again, so rotating it needs no restart. Fields ``prism serve``'s options
override (``--listen``, ``--admin``, ``--log-level``, ``--log-format``) are overridden in the
file read again too: they keep the command line's value and are no change.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from prism._proto.prism.admin.v1 import ReloadConfigResponse
from prism.config import ConfigError, NamespaceConfig, ProxyConfig, load_config
from prism.config.admin import resolve_admin_token
from prism.grpc.wire.status import FailedPrecondition
from prism.hosting.host import PluginStartFailed
from prism.proxy.authn import build_authenticator
from prism.proxy.pipeline import Authenticator

if TYPE_CHECKING:
    from prism.proxy.app import Proxy

__all__ = ["LIVE_FIELDS", "ConfigRejected", "ConfigReloader", "ReloadResult", "revision_of"]

log = logging.getLogger("prism.proxy")

LIVE_FIELDS = frozenset({"namespaces", "secrets", "shutdown_grace", "auth"})


def revision_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


class ConfigRejected(FailedPrecondition):
    """The file did not validate; ``errors`` are its problems, one per line (no secret)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(
            "config rejected; the running configuration keeps serving: " + "; ".join(errors)
        )
        self.errors = errors


@dataclass
class ReloadResult:
    revision: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


def _secrets_digest(config: ProxyConfig, ns: NamespaceConfig) -> str | None:
    """A digest of ``ns``'s resolved credentials (never the values), to see a rotation."""
    try:
        resolved = config.resolve_credentials(ns)
    except ConfigError:
        return None
    digest = hashlib.sha256()
    for key in sorted(resolved):
        digest.update(key.encode() + b"\0" + resolved[key].encode() + b"\0")
    return digest.hexdigest()


class ConfigReloader:
    """The running configuration's revision and the reload of its file (module docstring)."""

    def __init__(
        self,
        proxy: Proxy,
        path: Path | None,
        overrides: Callable[[ProxyConfig], ProxyConfig] | None = None,
    ) -> None:
        self.proxy = proxy
        self.path = path
        #: Applied to each file read (``prism serve``'s options): an overridden field keeps
        #: its override, and does not read as a change that needs a restart.
        self.overrides = overrides
        config = proxy.config
        data = None
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                data = None
        self.revision = (
            revision_of(data)
            if data is not None
            else "code:" + revision_of(config.model_dump_json().encode())
        )
        self.loaded_at = time.time()
        self.restart_required: list[str] = []
        self._secrets = {ns.name: _secrets_digest(config, ns) for ns in config.namespaces}
        self._lock = trio.Lock()
        # A config source other than a file (etcd: prism.fleet.source) sets these: what the
        # admin API shows as the config's path, and what a reload (SIGHUP, admin) re-reads.
        self.source: str | None = None
        self.reread: Callable[[], Awaitable[ReloadResult]] | None = None

    @property
    def path_text(self) -> str:
        if self.source is not None:
            return self.source
        return "" if self.path is None else str(self.path)

    async def reload_response(self) -> ReloadConfigResponse:
        """:meth:`reload`, as the admin API answers it."""
        result = await self.reload()
        return ReloadConfigResponse(
            revision=result.revision,
            added=result.added,
            removed=result.removed,
            reloaded=result.reloaded,
            unchanged=result.unchanged,
            failed=result.failed,
            restart_required=result.restart_required,
        )

    async def reload(self) -> ReloadResult:
        """Re-read the file and apply it. ConfigRejected (nothing changed) when it is invalid;
        FailedPrecondition when the proxy has no file. Reloads run one after the other.
        Cancellation stops the reload where it is: namespaces already switched stay switched."""
        path = self.path
        if path is None and self.reread is not None:
            return await self.reread()
        if path is None:
            raise FailedPrecondition(
                "the proxy's configuration was not read from a file: there is nothing to re-read"
            )
        async with self._lock:
            new, data = await trio.to_thread.run_sync(_read, path)
            if self.overrides is not None:
                try:
                    new = self.overrides(new)
                except ConfigError as exc:
                    raise ConfigRejected(list(exc.errors)) from None
            return await self._apply(new, revision_of(data))

    async def apply(self, new: ProxyConfig, data: bytes) -> ReloadResult:
        """Apply a configuration another source read and validated (etcd:
        :mod:`prism.fleet.source`) as a reload applies the file's; ``data``: its text, which
        the revision is computed from. Runs after any reload in progress."""
        if self.overrides is not None:
            try:
                new = self.overrides(new)
            except ConfigError as exc:
                raise ConfigRejected(list(exc.errors)) from None
        async with self._lock:
            return await self._apply(new, revision_of(data))

    async def _apply(self, new: ProxyConfig, revision: str) -> ReloadResult:
        proxy = self.proxy
        old = proxy.config
        result = ReloadResult(revision)
        result.restart_required = [
            f"restart required for {name}"
            for name in type(old).model_fields
            if name not in LIVE_FIELDS and getattr(old, name) != getattr(new, name)
        ]
        auth = new.auth
        if auth.mtls.required != old.auth.mtls.required:  # bound into the TLS listener
            result.restart_required.append("restart required for auth.mtls.required")
        try:
            auth = auth.replace(mtls=auth.mtls.replace(required=old.auth.mtls.required))
            token = resolve_admin_token(old.admin, new.secrets)  # admin itself is not live
            effective = old.replace(
                namespaces=new.namespaces,
                secrets=new.secrets,
                shutdown_grace=new.shutdown_grace,
                auth=auth,
            )
            authenticator = None
            if old.auth != auth or _anonymous(old) != _anonymous(effective):
                authenticator = build_authenticator(effective, proxy.metrics)  # reads key files
        except ConfigError as exc:
            raise ConfigRejected(list(exc.errors)) from None
        if authenticator is not None:
            await replace_authenticator(proxy, authenticator)
        proxy.host.set_config(effective)
        if proxy.admin_auth is not None:
            proxy.admin_auth.token = token

        before = {ns.name: ns for ns in old.namespaces}
        running: dict[str, NamespaceConfig] = {}  # what each namespace ends up with
        secrets = {ns.name: _secrets_digest(effective, ns) for ns in effective.namespaces}

        async def added(ns: NamespaceConfig) -> None:
            try:
                await proxy.host.add(ns)
            except PluginStartFailed as exc:
                result.failed.append(f"{ns.name}: {exc}")
                return
            proxy.pipeline.set_namespace(ns)
            running[ns.name] = ns
            result.added.append(ns.name)

        async def changed(ns: NamespaceConfig) -> None:
            route = proxy.host.route(ns.name)
            try:
                if route.disabled is not None:
                    async with route.reload_lock:
                        route.config = ns  # starts with it once enabled
                else:
                    await proxy.host.reload(ns.name, ns)
            except PluginStartFailed as exc:
                result.failed.append(f"{ns.name}: {exc}")
                running[ns.name] = before[ns.name]
                secrets[ns.name] = self._secrets.get(ns.name)
                return
            proxy.pipeline.set_namespace(ns)
            running[ns.name] = ns
            result.reloaded.append(ns.name)

        async def removed(name: str) -> None:
            proxy.pipeline.remove_namespace(name)
            await proxy.host.remove(name)
            proxy.forget_namespace(name)
            result.removed.append(name)

        async with trio.open_nursery() as nursery:
            for name in before:
                if name not in secrets:
                    nursery.start_soon(removed, name)
            for ns in effective.namespaces:
                previous = before.get(ns.name)
                if previous is None:
                    nursery.start_soon(added, ns)
                elif previous != ns or secrets[ns.name] != self._secrets.get(ns.name):
                    nursery.start_soon(changed, ns)
                else:
                    running[ns.name] = ns
                    result.unchanged.append(ns.name)

        order = [ns.name for ns in effective.namespaces]
        position = {name: i for i, name in enumerate([*before, *order])}
        final = tuple(running[name] for name in order if name in running)
        if final != effective.namespaces:
            effective = effective.replace(namespaces=final)
            proxy.host.set_config(effective)
        proxy.host.routes = {
            name: proxy.host.routes[name] for name in order if name in proxy.host.routes
        }
        proxy.config = effective
        self._secrets = {name: secrets.get(name) for name in running}
        self.revision, self.loaded_at = revision, time.time()
        self.restart_required = result.restart_required
        for listed in (result.added, result.removed, result.reloaded, result.unchanged):
            listed.sort(key=position.__getitem__)
        log.info(
            "config %s loaded: added %s, removed %s, reloaded %s, unchanged %d%s%s",
            revision,
            result.added or "none",
            result.removed or "none",
            result.reloaded or "none",
            len(result.unchanged),
            "".join(f"; failed {item}" for item in result.failed),
            "".join(f"; {item} (keeping the old value)" for item in result.restart_required),
        )
        return result


def _anonymous(config: ProxyConfig) -> bool:
    return any(ns.access.anonymous for ns in config.namespaces)


async def replace_authenticator(proxy: Proxy, authenticator: Authenticator) -> None:
    """Start ``authenticator``'s background work in the proxy's nursery (a JWKS URL: returns
    once its first fetch is over), send calls to it, then stop the old one's. Cancellation
    before the switch leaves the old one in place."""
    run = getattr(authenticator, "run", None)
    if run is not None and proxy.nursery is not None:
        await proxy.nursery.start(run)
    old, proxy.pipeline.authenticator = proxy.pipeline.authenticator, authenticator
    stop = getattr(old, "stop", None)
    if stop is not None:
        stop()


def _read(path: Path) -> tuple[ProxyConfig, bytes]:
    """The validated file and the bytes its revision is computed from."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigRejected([f"cannot read config {path}: {exc.strerror}"]) from None
    try:
        config = load_config(path)
        resolve_admin_token(config.admin, config.secrets)
    except ConfigError as exc:
        raise ConfigRejected(list(exc.errors)) from None
    return config, data
