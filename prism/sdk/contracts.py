"""Contracts: named sets of capabilities, so callers and test suites know what a plugin serves.

A plugin's **capabilities** are what its ``InitializeResponse.supported_operations`` lists, and
the SDK derives that list from the plugin's decorators, never from a second declaration:

- every operation name (``"get"``), in declaration order, then
- ``"<operation>:<feature>"`` for each optional feature an operation declares
  (``@operation("set", ..., features=("etag", "ttl"))`` → ``"set:etag"``, ``"set:ttl"``).

A **contract** is a named set of capabilities with a documented behaviour (the data model in
``protos/prism/data/v1``); a plugin *claims* a contract when it has every capability in the set,
and the acceptance suites (``tests/acceptance``) run a contract's checks against every plugin
that claims it. A feature a plugin does not declare is refused (``UNIMPLEMENTED``) rather than
ignored — see ``prism.sdk.keyvalue``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CONTRACTS",
    "OPERATION_FEATURES",
    "Contract",
    "capabilities",
    "capability",
    "check_features",
    "claimed",
    "contract",
    "partial",
]


@dataclass(frozen=True)
class Contract:
    name: str
    requires: frozenset[str]  # capabilities
    summary: str


def _contract(name: str, summary: str, *requires: str) -> Contract:
    return Contract(name, frozenset(requires), summary)


CONTRACTS: tuple[Contract, ...] = (
    _contract("kv.basic", "get, set, delete, exists", "get", "set", "delete", "exists"),
    _contract(
        "kv.etag",
        "optimistic concurrency: etags from get/set, if_match and if_absent (ABORTED, nothing "
        "written)",
        "get:etag",
        "set:etag",
        "delete:etag",
    ),
    _contract(
        "kv.bulk",
        "get_many, set_many, delete_many with per-item results",
        "get_many",
        "set_many",
        "delete_many",
    ),
    _contract("kv.transact", "sets and deletes applied atomically or not at all", "transact"),
    _contract(
        "kv.ttl", "ttl_ms on set, expire (and remaining TTL where known)", "set:ttl", "expire"
    ),
    _contract("kv.list", "keys by prefix, in order, page by page", "list_keys"),
    _contract("pubsub", "publish, and subscribe as a stream", "publish", "subscribe"),
    _contract(
        "log",
        "produce to a topic; consume as a stream in a consumer group, with acknowledgements "
        "(at least once)",
        "produce",
        "consume",
    ),
    _contract("sql", "parameterized query/execute with typed values", "query", "execute"),
    _contract(
        "sql.transaction",
        "a list of statements applied all or none (the statement's error names it)",
        "transaction",
    ),
    _contract(
        "object",
        "objects of any size streamed in chunks: put, get (with byte ranges), head, list by "
        "prefix page by page, delete; size, content type, ETag and user metadata",
        "put_object",
        "get_object",
        "head_object",
        "list_objects",
        "delete_object",
    ),
)
_BY_NAME: Mapping[str, Contract] = {c.name: c for c in CONTRACTS}

#: The optional features of the data model's operations (any other feature on these names is a
#: typo, refused when the class is defined). Other operations may declare features freely.
OPERATION_FEATURES: Mapping[str, frozenset[str]] = {
    "get": frozenset({"etag", "ttl"}),
    "set": frozenset({"etag", "ttl"}),
    "delete": frozenset({"etag"}),
    "get_many": frozenset({"etag", "ttl"}),
    "set_many": frozenset({"etag", "ttl"}),
    "delete_many": frozenset({"etag"}),
    "transact": frozenset({"etag", "ttl"}),
    "query": frozenset({"bool", "timestamp", "json", "array"}),
    "execute": frozenset({"batch"}),
    "transaction": frozenset({"bool", "timestamp", "json", "array"}),
}
_FEATURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


def contract(name: str) -> Contract:
    """The contract called ``name``; KeyError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no contract {name!r} (known: {', '.join(_BY_NAME)})") from None


def capability(operation: str, feature: str | None = None) -> str:
    return operation if feature is None else f"{operation}:{feature}"


def check_features(operation: str, features: Iterable[str]) -> frozenset[str]:
    """``features`` as declared on ``operation``; ValueError for a malformed or unknown one."""
    found = frozenset(features)
    for feature in sorted(found):
        if not _FEATURE_NAME.match(feature):
            raise ValueError(f"operation {operation!r}: malformed feature name {feature!r}")
    known = OPERATION_FEATURES.get(operation)
    if known is not None and not found <= known:
        unknown = ", ".join(repr(f) for f in sorted(found - known))
        raise ValueError(
            f"operation {operation!r} has no feature {unknown} (it has: {', '.join(sorted(known))})"
        )
    return found


def capabilities(supported_operations: Iterable[str]) -> frozenset[str]:
    """The capability set of a plugin, from its ``supported_operations`` (as sent or derived)."""
    return frozenset(supported_operations)


def claimed(supported_operations: Iterable[str]) -> tuple[str, ...]:
    """The contracts whose every capability is in ``supported_operations``, in CONTRACTS order."""
    have = capabilities(supported_operations)
    return tuple(c.name for c in CONTRACTS if c.requires <= have)


def partial(supported_operations: Iterable[str]) -> dict[str, frozenset[str]]:
    """Contracts a plugin has some but not all capabilities of → the capabilities it lacks."""
    have = capabilities(supported_operations)
    return {
        c.name: c.requires - have for c in CONTRACTS if c.requires & have and not c.requires <= have
    }
