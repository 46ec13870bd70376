"""``prism plugin list|status|reload|enable|disable`` and ``prism config reload``: the admin API
(prism.admin.v1.Admin) from a terminal.

Credentials: the bearer token from ``--token-file`` or ``$PRISM_ADMIN_TOKEN`` (sent as
``authorization: Bearer``, never printed), and for an ``admin.tls`` port, TLS with ``--cacert``
(and ``--cert``/``--key`` for mTLS). The Unix socket needs none."""

from __future__ import annotations

import json
import math
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import betterproto2
import trio

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    DisableNamespaceRequest,
    EnableNamespaceRequest,
    GetNamespaceRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    NamespaceStatus,
    ReloadConfigRequest,
    ReloadConfigResponse,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus
from prism.config import DEFAULT_ADMIN_LISTEN
from prism.grpc.transport import client_ssl_context
from prism.proxy.admin import namespace_json, reload_config_json

SERVICE = "/prism.admin.v1.Admin/"
M = TypeVar("M", bound=betterproto2.Message)


TOKEN_ENV = "PRISM_ADMIN_TOKEN"


def default_target() -> str:
    return os.environ.get("PRISM_ADMIN", DEFAULT_ADMIN_LISTEN)


@dataclass(frozen=True)
class Admin:
    """Where the admin API is and how to prove who we are."""

    target: str
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None

    def __str__(self) -> str:
        return self.target

    @classmethod
    def from_options(
        cls,
        target: str,
        token_file: Path | None = None,
        cacert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> Admin:
        """``--token-file`` (else ``$PRISM_ADMIN_TOKEN``), ``--cacert``/``--cert``/``--key``."""
        token = os.environ.get(TOKEN_ENV) or None
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise CliError(f"--token-file: cannot read {token_file}: {reason}", 2) from None
            if not token:
                raise CliError(f"--token-file: {token_file} is empty", 2)
        context = None
        if cacert is not None or cert is not None:
            try:
                context = client_ssl_context(cacert, cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"--cacert/--cert/--key: {exc}", 2) from None
        return cls(target, token, context)

    @property
    def metadata(self) -> list[tuple[str, str | bytes]]:
        return [] if self.token is None else [("authorization", f"Bearer {self.token}")]


class CliError(Exception):
    """Printed as ``prism: <message>``; the command exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run(command: Callable[[], Awaitable[str]], target: object, timeout: float | None) -> str:
    """Run one admin command under ``timeout`` seconds (None: no limit, for a reload that may
    drain for ``drain_grace``). Ctrl-C cancels the call, and with it a reload in progress."""

    async def bounded() -> str:
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await command()

    try:
        return trio.run(bounded)
    except trio.TooSlowError:
        raise CliError(
            f"cannot reach the admin API at {target}: no answer within {timeout:g} s"
        ) from None


async def call(admin: Admin, method: str, request: betterproto2.Message, reply: type[M]) -> M:
    """One admin call; errors become CliErrors a user can act on. Cancellation cancels it."""
    target = admin.target
    try:
        async with pg.open_channel(target, ssl_context=admin.ssl_context) as channel:
            response: M = await channel.unary_unary(
                SERVICE + method, request, reply, metadata=admin.metadata
            )
            return response
    except Exception as raised:
        # The channel's nursery wraps what the call raised in an ExceptionGroup.
        exc = _single(raised)
        if isinstance(exc, ValueError):  # a malformed target
            raise CliError(f"--admin: {exc}", 2) from None
        if isinstance(exc, pg.Unavailable):
            reason = _os_reason(exc) or exc.message
            raise CliError(f"cannot reach the admin API at {target}: {reason}") from None
        if isinstance(exc, pg.DeadlineExceeded):
            raise CliError(f"cannot reach the admin API at {target}: no answer in time") from None
        if isinstance(exc, pg.Unimplemented):
            raise CliError(f"{target} does not serve the Prism admin API") from None
        if isinstance(exc, pg.Unauthenticated):
            hint = (
                f"give --token-file or ${TOKEN_ENV}"
                if admin.token is None
                else "check the token (admin.token)"
            )
            raise CliError(f"{target}: not authenticated: {hint}") from None
        if isinstance(exc, pg.GrpcError):
            raise CliError(exc.message or exc.status.name) from None
        raise


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's reason a connection failed ("Connection refused", "No such file
    or directory"), found down the chain of causes."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        elif isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        else:
            cause = cause.__cause__
    return None


async def list_namespaces(target: Admin, *, as_json: bool) -> str:
    reply = await call(target, "ListNamespaces", ListNamespacesRequest(), ListNamespacesResponse)
    if as_json:
        return json.dumps({"namespaces": [to_json(ns) for ns in reply.namespaces]}, indent=2)
    return table(reply.namespaces)


async def namespace_status(target: Admin, name: str, *, as_json: bool) -> str:
    ns = await call(target, "GetNamespace", GetNamespaceRequest(name=name), NamespaceStatus)
    if as_json:
        return json.dumps(to_json(ns), indent=2)
    data = to_json(ns)
    lines = [f"{key}: {value}" for key, value in data.items() if key not in ("health", "metrics")]
    lines.append(f"health: {_health(ns)}")
    for key, value in (data["metrics"] or {}).items():
        lines.append(f"metrics.{key}: {value}")
    return "\n".join(lines)


async def reload_namespace(target: Admin, name: str) -> str:
    reply = await call(
        target,
        "ReloadNamespace",
        ReloadNamespaceRequest(namespace=name),
        ReloadNamespaceResponse,
    )
    return (
        f"namespace {name!r} reloaded: instance {reply.generation} is serving "
        f"(took {reply.duration_seconds:.3f} s)"
    )


def to_json(ns: NamespaceStatus) -> dict[str, Any]:
    return namespace_json(ns)


async def set_enabled(target: Admin, name: str, *, enabled: bool) -> str:
    if enabled:
        ns = await call(
            target, "EnableNamespace", EnableNamespaceRequest(namespace=name), NamespaceStatus
        )
        return f"namespace {name!r} enabled: instance {ns.generation} is serving"
    await call(target, "DisableNamespace", DisableNamespaceRequest(namespace=name), NamespaceStatus)
    return f"namespace {name!r} disabled: its plugin is stopped; calls get UNAVAILABLE"


async def reload_config(target: Admin, *, as_json: bool) -> str:
    reply = await call(target, "ReloadConfig", ReloadConfigRequest(), ReloadConfigResponse)
    if as_json:
        return json.dumps(reload_config_json(reply), indent=2)
    lines = [f"config {reply.revision} loaded"]
    for what in ("added", "removed", "reloaded", "unchanged"):
        names = getattr(reply, what)
        if names:
            lines.append(f"{what}: {', '.join(names)}")
    lines += [f"failed: {item}" for item in reply.failed]
    lines += [f"{item} (the old value stays in force)" for item in reply.restart_required]
    return "\n".join(lines)


def _health(ns: NamespaceStatus) -> str:
    health = ns.last_health
    if health is None:
        return "-"  # not checked since the instance started
    status = HealthCheckResponseStatus(health.status).name
    return f"{status}: {health.message}" if health.message else status


def table(namespaces: list[NamespaceStatus]) -> str:
    header = ("NAMESPACE", "PLUGIN", "MODE", "INSTANCE", "STATE", "IN-FLIGHT", "HEALTH")
    rows = [
        (
            ns.name,
            ns.plugin,
            ns.mode,
            str(ns.generation or "-"),
            "disabled"
            if ns.disabled
            else "available"
            if ns.available
            else f"unavailable ({ns.unavailable_reason})",
            str(ns.in_flight),
            _health(ns),
        )
        for ns in namespaces
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


async def update_namespaces(
    target: Admin, plugins: list[str], version: str, failed: list[str]
) -> str:
    """Hot-reload every sidecar namespace running one of ``plugins``; what to print. The
    namespaces whose reload failed are added to ``failed``. In-process ones need a restart;
    remote ones are served elsewhere."""
    reply = await call(target, "ListNamespaces", ListNamespacesRequest(), ListNamespacesResponse)
    lines: list[str] = []
    for ns in reply.namespaces:
        if ns.plugin not in plugins:
            continue
        if ns.mode == "sidecar":
            try:
                done = await reload_namespace(target, ns.name)
            except CliError as exc:
                failed.append(ns.name)
                lines.append(f"namespace {ns.name!r}: reload failed, the old version serves: {exc}")
            else:
                lines.append(done.replace("reloaded:", f"reloaded on {version}:"))
        elif ns.mode == "in_process":
            lines.append(
                f"namespace {ns.name!r} runs {ns.plugin} in-process: restart the proxy to "
                f"load {version}"
            )
        else:
            lines.append(f"namespace {ns.name!r} runs {ns.plugin} remotely: update its service")
    if not lines:
        lines.append(f"no namespace of the proxy at {target} runs {', '.join(plugins)}")
    return "\n".join(lines)
