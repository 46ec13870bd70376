"""Authorization: who may call which operations of a namespace (its ``access`` section).

The decision, for a caller (``info.identity``) and an operation of namespace NS:

1. A caller without credentials (``Identity.anonymous``) is refused unless NS sets
   ``access.anonymous: true``: deny by default.
2. A namespace without ``access.rules`` lets every caller step 1 admits call every operation.
3. Otherwise the first rule that matches both the caller (every condition it gives: subject
   glob, SAN globs, claims, scopes) and the operation (one of its globs) allows the call; none
   → refused.

A refusal is ``PermissionDenied("caller may not call OPERATION on namespace NS")``: it names
the namespace and the operation, never the rule (which would tell a caller how to get in), and
is counted in ``prism_authorization_denied_total``. Matching is case-sensitive (``fnmatchcase``
globs: ``*``, ``?``, ``[...]``); patterns are compiled once, when the namespace's stages are
built, and decisions are pure functions of the identity and the operation name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fnmatch import translate
from typing import Any

from prism.config.auth import AccessConfig, AccessRule, ClaimValue
from prism.grpc.wire.status import PermissionDenied
from prism.proxy.metrics import Counter
from prism.proxy.request import ANONYMOUS, Identity, RequestInfo

__all__ = ["NamespaceAuthorizer", "Rule"]

# The kinds a SAN glob may name, and how certificate parsers spell them (ssl's getpeercert
# says "IP Address"; cryptography's names differ in case).
_SAN_KINDS = {"uri": ("uri",), "dns": ("dns",), "ip": ("ip", "ip address"), "email": ("email",)}


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern))


def _globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regular expression matching any of ``patterns`` (None: no pattern)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


class _SanGlob:
    __slots__ = ("kinds", "pattern")

    def __init__(self, text: str) -> None:
        kind, sep, rest = text.partition(":")
        kinds = _SAN_KINDS.get(kind.lower()) if sep else None
        #: None: any kind of name; otherwise the lower-cased kinds it matches.
        self.kinds = kinds
        self.pattern = _glob(rest if kinds is not None else text)

    def matches(self, sans: Sequence[tuple[str, str]]) -> bool:
        kinds = self.kinds
        return any(
            (kinds is None or kind.lower() in kinds) and self.pattern.match(value) is not None
            for kind, value in sans
        )


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _claim_holds(actual: Any, expected: ClaimValue) -> bool:
    # bool is an int in Python: true must not equal 1, nor 1 equal true.
    def same(value: Any) -> bool:
        return type(value) is type(expected) and value == expected

    if isinstance(actual, list | tuple):
        return any(same(item) for item in actual)
    return same(actual)


class Rule:
    """One ``access.rules`` entry, compiled."""

    __slots__ = ("claims", "operations", "sans", "scopes", "subject")

    def __init__(self, rule: AccessRule) -> None:
        operations = _globs(rule.operations)
        assert operations is not None  # the config requires at least one
        self.operations = operations
        self.subject = None if rule.subject is None else _glob(rule.subject)
        self.sans = tuple(_SanGlob(text) for text in rule.sans)
        self.claims = tuple(rule.claims.items())
        self.scopes = frozenset(rule.scopes)

    def matches_caller(self, identity: Identity) -> bool:
        if self.subject is not None and self.subject.match(identity.subject) is None:
            return False
        if self.sans and not any(glob.matches(identity.sans) for glob in self.sans):
            return False
        if self.scopes and not self.scopes <= identity.scopes:
            return False
        claims = identity.claims
        return all(_claim_holds(_claim(claims, name), value) for name, value in self.claims)

    def allows(self, identity: Identity, operation: str) -> bool:
        return self.operations.match(operation) is not None and self.matches_caller(identity)


class NamespaceAuthorizer:
    """The authorization stage of one namespace (module docstring)."""

    __slots__ = ("_denied", "anonymous", "namespace", "rules")

    def __init__(self, namespace: str, access: AccessConfig, denied: Counter) -> None:
        self.namespace = namespace
        self.anonymous = access.anonymous
        self.rules = tuple(Rule(rule) for rule in access.rules)
        self._denied = denied

    def permits(self, identity: Identity, operation: str) -> bool:
        """Whether ``identity`` may call ``operation`` here."""
        if identity.anonymous and not self.anonymous:
            return False
        rules = self.rules
        if not rules:
            return True
        for rule in rules:  # noqa: SIM110 (a loop, not any(generator): on every call)
            if rule.allows(identity, operation):
                return True
        return False

    def admits(self, identity: Identity) -> bool:
        """Whether ``identity`` may call at least one operation here (what discovery shows)."""
        if identity.anonymous and not self.anonymous:
            return False
        rules = self.rules
        return not rules or any(rule.matches_caller(identity) for rule in rules)

    def admit(self, info: RequestInfo) -> None:
        """Raise PermissionDenied (counted) unless the caller may use this namespace at all
        (discovery: ``DescribeNamespace``)."""
        if not self.admits(info.identity if info.identity is not None else ANONYMOUS):
            self._denied.inc()
            raise PermissionDenied(f"caller may not use namespace {self.namespace!r}")

    def authorize(self, info: RequestInfo) -> None:
        identity = info.identity if info.identity is not None else ANONYMOUS
        if not self.permits(identity, info.operation):
            self._denied.inc()
            raise PermissionDenied(
                f"caller may not call {info.operation!r} on namespace {self.namespace!r}"
            )
