"""The ``auth`` section (who a caller is) and a namespace's ``access`` section (what it may do).

Both are read by the request pipeline's authentication and authorization stages
(``prism.proxy.assembly``). Authorization is deny by default for callers without credentials:
a namespace admits them only with ``access: {anonymous: true}``. A namespace without
``rules`` lets every caller it admits call every operation; with rules, a caller may call an
operation only when a rule matches both (see :class:`AccessRule`).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator

from prism.config._model import Model
from prism.config._types import Flag, Text

__all__ = ["AccessConfig", "AccessRule", "AuthConfig", "ClaimValue"]

#: What a rule may require a JWT claim to be (or, for a list claim, to contain).
ClaimValue = str | int | bool


class AuthConfig(Model):
    """How the front door authenticates callers (client certificates, bearer tokens)."""


class AccessRule(Model):
    """Who (every condition given must hold) may call which operations (globs)."""

    operations: tuple[Text, ...] = Field(min_length=1)
    """Operation globs this rule allows: "get", "list_*", "*"."""
    subject: Text | None = None
    """A glob the caller's subject must match (a certificate's SAN URI/DNS or CN, a token's
    sub; "anonymous" for a caller without credentials)."""
    sans: tuple[Text, ...] = ()
    """Globs over the client certificate's subject alternative names: one must match one SAN.
    "URI:spiffe://example.org/*" or "DNS:*.example.org" match that kind of name only; a glob
    without a kind matches any."""
    claims: Mapping[Text, ClaimValue] = {}
    """JWT claims the caller's token must carry: each equal to the value given, or, for a claim
    that is a list, containing it. A dotted name ("realm.role") reaches into nested claims."""
    scopes: tuple[Text, ...] = ()
    """OAuth2 scopes the caller's token must all have."""

    @field_validator("operations", "sans", "scopes")
    @classmethod
    def _non_empty(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not value for value in values):
            raise ValueError("entries must be non-empty")
        return values


class AccessConfig(Model):
    """Who may call which operations of a namespace."""

    anonymous: Flag = False
    """Callers without credentials may use this namespace. The default is to refuse them
    (PERMISSION_DENIED)."""
    rules: tuple[AccessRule, ...] = ()
    """Who may call what; the first rule matching the caller and the operation allows it, and
    a call no rule allows is refused (PERMISSION_DENIED). None: every caller admitted here may
    call every operation."""
