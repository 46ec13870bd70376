"""Warming a plugin process up before it says it is ready: what would otherwise be done on its
first calls is done once, before the handshake.

A freshly started Python process pays for much on its first message of each type: betterproto2
builds each message class's metadata on first use (``typing.get_type_hints`` on its fields) and
imports ``pydantic.dataclasses`` the first time it parses anything (~30 modules);
:mod:`prism.grpc.protocheck` compiles each type's schema, :mod:`prism.sdk._fastcodec` each
type's codec. On a sidecar's warm standby all of that used to land on the Initialize that
follows a crash: ~60 ms of CPU measured on the 2-core development machine, 0.6-0.8 s of wall
time while 32 callers and other work kept both cores busy (docs/benchmarks.md, recovery). So
:func:`warm_up` encodes and decodes an empty instance of every message the plugin protocol,
the plugin's config and its operations use, and of every message nested in them, before
:func:`~prism.sdk.runner.serve_plugin` prints its handshake or reports started.

Nothing of the plugin runs: no handler, no hook, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import betterproto2

from prism._proto.google.protobuf import Any as AnyMessage
from prism._proto.google.protobuf import Struct
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    PluginDescription,
    PluginMetrics,
    StreamRequest,
    StreamResponse,
)
from prism.grpc import protocheck
from prism.grpc.service import Service
from prism.sdk import _fastcodec
from prism.sdk.plugin import BackendPlugin

log = logging.getLogger("prism.sdk.warmup")

#: Messages the SDK reads and writes itself (the envelopes travel as bytes over gRPC).
_PROTOCOL = (
    ExecuteRequest,
    ExecuteResponse,
    StreamRequest,
    StreamResponse,
    ConfigDocument,
    Struct,
    AnyMessage,
    PluginMetrics,
    PluginDescription,
)


def message_types(
    plugin_type: type[BackendPlugin], services: Iterable[Service] = ()
) -> set[type[betterproto2.Message]]:
    """Every message class a process serving ``plugin_type`` with ``services`` meets: the
    services' request and response types, the SDK's envelopes, the plugin's config type and
    its operations' payload types, and every message type nested in those."""
    roots: list[object] = list(_PROTOCOL)
    for service in services:
        for rpc, _handler in service.rpc_methods().values():
            roots += (rpc.request_type, rpc.response_type)
    roots.append(plugin_type.config_type)
    for spec in plugin_type.operations.values():
        roots += (spec.params, spec.result, spec.inbound)
    found: set[type[betterproto2.Message]] = set()
    pending = [t for t in roots if isinstance(t, type) and issubclass(t, betterproto2.Message)]
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.add(cls)
        info: Any = getattr(cls, "_betterproto")  # noqa: B009 - a classproperty mypy misreads
        for nested in info.cls_by_field.values():
            if isinstance(nested, type) and issubclass(nested, betterproto2.Message):
                pending.append(nested)
    return found


def warm_up(plugin_type: type[BackendPlugin], services: Iterable[Service] = ()) -> int:
    """Encode and decode an empty message of every type :func:`message_types` finds, through
    the codecs the process uses (betterproto2, protocheck, the SDK's fast codec). Returns how
    many types it warmed (one that fails is skipped: it is only not warm)."""
    types = message_types(plugin_type, services)
    warmed = 0
    for cls in types:
        try:
            data = bytes(cls())
            cls.parse(protocheck.check(cls, data))
            _fastcodec.decode(cls, _fastcodec.encode(cls.parse(data)))
        except Exception as exc:  # a warm-up must never stop a plugin from serving
            log.debug("warm-up of %s skipped: %r", cls.__name__, exc)
            continue
        warmed += 1
    return warmed
