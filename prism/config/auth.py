"""The ``auth`` section (who a caller is) and a namespace's ``access`` section (what it may do).

Both are read by the request pipeline's authentication and authorization stages
(``prism.proxy.assembly``). Authentication (``auth``) establishes an identity from a verified
client certificate (when the front door's ``tls.client_ca`` requires one) and from a bearer
JWT (when ``auth.jwt`` is set); with neither, every caller is anonymous. Authorization is deny
by default for callers without credentials: a namespace admits them only with
``access: {anonymous: true}``. A namespace without ``rules`` lets every caller it admits call
every operation; with rules, a caller may call an operation only when a rule matches both (see
:class:`AccessRule`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from prism.config._model import FieldError, Model
from prism.config._types import ConfigPath, Flag, Seconds, Text

__all__ = [
    "AccessConfig",
    "AccessRule",
    "AuthConfig",
    "ClaimValue",
    "JwtConfig",
    "MtlsConfig",
]

CertificateName = Literal["uri", "dns", "email", "ip", "cn"]
#: Asymmetric algorithms only: ``none`` and the HMAC family (HS*) can never be configured, so a
#: public key can never be used as an HMAC secret.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
#: What a rule may require a JWT claim to be (or, for a list claim, to contain).
ClaimValue = str | int | bool


def _leeway(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PydanticCustomError("expected_seconds", "expected a number of seconds (0 to 300)")
    return float(value)


def _one_or_more(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


Leeway = Annotated[float, Field(ge=0, le=300), BeforeValidator(_leeway)]


class MtlsConfig(Model):
    """The identity of a caller with a verified client certificate (the front door's
    ``tls.client_ca`` makes clients present one)."""

    identity: tuple[CertificateName, ...] = ("uri", "dns", "cn")
    """Where the caller's subject comes from, first match wins: the certificate's SAN URIs
    (``uri``), DNS names (``dns``), e-mail addresses (``email``), IP addresses (``ip``), or
    its subject common name (``cn``). A certificate with none of them is refused."""
    required: Flag = True
    """Every connection must present a client certificate signed by ``tls.client_ca`` (the
    TLS handshake refuses one without). ``false``: a certificate is asked for and verified
    when the client has one, and a client without one still connects; its calls then need a
    bearer JWT (``auth.jwt``) or a namespace that admits anonymous callers."""

    @field_validator("identity")
    @classmethod
    def _identity(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise FieldError((), "name at least one of uri, dns, email, ip, cn")
        if len(set(names)) != len(names):
            raise FieldError((), "a name is listed twice")
        return names


class JwtConfig(Model):
    """OAuth2 bearer tokens (``authorization: Bearer <JWT>``), verified with public keys."""

    issuer: Text
    """The ``iss`` every token must carry."""
    audience: Annotated[tuple[Text, ...], BeforeValidator(_one_or_more)]
    """The ``aud`` a token must name (one of these; a string or a list)."""
    algorithms: tuple[JwtAlgorithm, ...] = ("RS256", "ES256", "EdDSA")
    """Signature algorithms accepted; a token signed otherwise is refused. Asymmetric only."""
    leeway: Leeway = 30.0
    """Seconds of clock skew allowed when checking ``exp`` and ``nbf`` (0 to 300)."""
    subject_claim: Text = "sub"
    """The claim that names the caller (the identity's subject)."""
    keys: tuple[ConfigPath, ...] = ()
    """Public keys (PEM files: a public key or a certificate), tried for tokens whose ``kid``
    names no JWKS key."""
    jwks_file: ConfigPath | None = None
    """A JWKS file (``{"keys": [...]}``), read when the config is loaded."""
    jwks_url: Text | None = None
    """A JWKS URL (https; http only to a loopback host; no user or password: a JWKS is public
    and URLs get logged), fetched at start, cached for its
    ``Cache-Control: max-age`` (bounded by ``jwks_cache_min``/``jwks_cache_max``), refreshed
    in the background, and re-fetched when a token names an unknown ``kid``."""
    jwks_ca: ConfigPath | None = None
    """CA bundle (PEM) to verify the JWKS URL's server with; default: the system's roots."""
    jwks_cache_min: Seconds = 60.0
    """Shortest time the fetched key set is kept before the next scheduled refresh."""
    jwks_cache_max: Seconds = 3600.0
    """Longest time it is kept (also when the response has no max-age)."""
    jwks_refetch_interval: Seconds = 30.0
    """At most one fetch per this many seconds for tokens with an unknown ``kid`` (and the
    retry period after a failed fetch)."""
    jwks_fetch_timeout: Seconds = 10.0
    """Seconds one JWKS fetch may take."""

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # A JWKS is a public document; and HTTP clients log request URLs.
            raise FieldError((), "no user or password in the URL (a JWKS needs none)")
        if parts.scheme == "https" and parts.hostname:
            return url
        if parts.scheme == "http" and parts.hostname in _LOOPBACK:
            return url
        raise FieldError((), "expected an https:// URL (http:// only to a loopback host)")

    @field_validator("audience")
    @classmethod
    def _audience(cls, audience: tuple[str, ...]) -> tuple[str, ...]:
        if not audience or not all(audience):
            raise FieldError((), "name at least one audience (non-empty strings)")
        return audience

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        if not algorithms:
            raise FieldError((), "name at least one algorithm")
        return algorithms

    @model_validator(mode="after")
    def _keys_and_bounds(self) -> JwtConfig:
        if not self.keys and self.jwks_file is None and self.jwks_url is None:
            raise FieldError("keys", "give keys, jwks_file or jwks_url: tokens need a key")
        if self.jwks_cache_min > self.jwks_cache_max:
            raise FieldError("jwks_cache_min", "greater than jwks_cache_max")
        if self.jwks_ca is not None and self.jwks_url is None:
            raise FieldError("jwks_ca", "a CA for jwks_url, which is not set")
        return self


class AuthConfig(Model):
    """How the front door authenticates callers (client certificates, bearer tokens)."""

    mtls: MtlsConfig = MtlsConfig()
    """Identity from verified client certificates."""
    jwt: JwtConfig | None = None
    """Bearer JWT verification; none = ``authorization`` metadata is not read."""


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
