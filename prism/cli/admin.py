"""``prism plugin list|status|reload``: the admin API (prism.admin.v1.Admin) from a terminal."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import betterproto2
import trio

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    GetNamespaceRequest,
    ListNamespacesRequest,
    ListNamespacesResponse,
    NamespaceStatus,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus
from prism.config import DEFAULT_ADMIN_LISTEN

SERVICE = "/prism.admin.v1.Admin/"
M = TypeVar("M", bound=betterproto2.Message)


def default_target() -> str:
    return os.environ.get("PRISM_ADMIN", DEFAULT_ADMIN_LISTEN)


class CliError(Exception):
    """Printed as ``prism: <message>``; the command exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run(command: Callable[[], Awaitable[str]], target: str, timeout: float | None) -> str:
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


async def call(target: str, method: str, request: betterproto2.Message, reply: type[M]) -> M:
    """One admin call; errors become CliErrors a user can act on. Cancellation cancels it."""
    try:
        async with pg.open_channel(target) as channel:
            response: M = await channel.unary_unary(SERVICE + method, request, reply)
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


async def list_namespaces(target: str, *, as_json: bool) -> str:
    reply = await call(target, "ListNamespaces", ListNamespacesRequest(), ListNamespacesResponse)
    if as_json:
        return json.dumps({"namespaces": [to_json(ns) for ns in reply.namespaces]}, indent=2)
    return table(reply.namespaces)


async def namespace_status(target: str, name: str, *, as_json: bool) -> str:
    ns = await call(target, "GetNamespace", GetNamespaceRequest(name=name), NamespaceStatus)
    if as_json:
        return json.dumps(to_json(ns), indent=2)
    data = to_json(ns)
    lines = [f"{key}: {value}" for key, value in data.items() if key not in ("health", "metrics")]
    lines.append(f"health: {_health(ns)}")
    for key, value in (data["metrics"] or {}).items():
        lines.append(f"metrics.{key}: {value}")
    return "\n".join(lines)


async def reload_namespace(target: str, name: str) -> str:
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
    """Plain JSON (integers as numbers, absent health/metrics as null), not protobuf's JSON
    mapping, whose int64 strings are awkward for scripts."""
    health = ns.last_health
    return {
        "name": ns.name,
        "plugin": ns.plugin,
        "mode": ns.mode,
        "generation": ns.generation,
        "available": ns.available,
        "unavailable_reason": ns.unavailable_reason,
        "in_flight": ns.in_flight,
        "health": None
        if health is None
        else {
            "status": HealthCheckResponseStatus(health.status).name,
            "message": health.message,
            "details": dict(health.details),
        },
        "metrics": None
        if ns.metrics is None
        else {f.name: getattr(ns.metrics, f.name) for f in dataclasses.fields(ns.metrics)},
    }


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
            "available" if ns.available else f"unavailable ({ns.unavailable_reason})",
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
