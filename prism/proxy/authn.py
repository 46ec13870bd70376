"""Authentication: who the caller of a DataProxy call is (the pipeline's ``Authenticator``).

Two kinds of credentials, read in this order:

1. A bearer JWT (``authorization: Bearer <token>`` metadata), when ``auth.jwt`` is configured:
   verified with PyJWT against the configured keys (:mod:`prism.proxy.jwks`), only with the
   configured asymmetric algorithms, and with ``exp``, ``nbf``, ``iss`` and ``aud`` checked
   within ``leeway``. A call that carries a token is judged by the token: an invalid one is
   refused even if the connection has a client certificate.
2. The verified client certificate of the connection (the front door's ``tls.client_ca``
   makes clients present one; the TLS handshake has already checked it against that CA):
   the subject is its first SAN URI, else SAN DNS name, else subject CN, in the order
   ``auth.mtls.identity`` gives.

A caller with neither is anonymous when some namespace admits anonymous callers
(``access.anonymous``: the authorization stage decides per namespace) and refused here
otherwise. Every refusal is UNAUTHENTICATED with one generic message, so a client learns
nothing about which check failed; the reason is logged (never the token) and counted in
``prism_auth_failures_total{reason}``.

PyJWT over joserfc: PyJWT is the library most Python OAuth2 stacks already depend on, its
verification API is one call with explicit ``algorithms``, ``audience``, ``issuer`` and
``leeway``, and it refuses ``alg: none`` and a public key used as an HMAC secret on its own
(prism's configuration cannot name HS* or ``none`` in the first place). joserfc would also
do; it brings JWE and more that a proxy verifying signatures does not need.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
import trio

from prism.config.auth import JwtConfig, MtlsConfig
from prism.grpc.wire.status import Unauthenticated
from prism.proxy.jwks import Keys
from prism.proxy.pipeline import Authenticator, NoAuthentication
from prism.proxy.request import ANONYMOUS, Identity, RequestInfo
from prism.proxy.tokencache import VerifiedTokens

if TYPE_CHECKING:
    from prism.config import ProxyConfig
    from prism.grpc.call import ServerCall
    from prism.proxy.metrics import ProxyMetrics

__all__ = ["GENERIC", "Authentication", "JwtVerifier", "build_authenticator"]

log = logging.getLogger("prism.proxy.authn")

#: What every refused client is told.
GENERIC = "missing or invalid credentials"
#: Longest ``authorization`` value read (a JWT from a real issuer is one to two KiB).
MAX_TOKEN_BYTES = 8192
#: Verified tokens remembered (prism/proxy/tokencache.py: per key-set generation, until their
#: exp), so a client sending the same token on every call pays for its signature check once.
CACHE_SIZE = 4096
#: Refusals logged per reason per LOG_WINDOW seconds: a client sending bad tokens in a loop
#: must not flood the log. Beyond that they are still counted in metrics, and the next line
#: logged for that reason says how many were not.
LOG_BURST = 20
LOG_WINDOW = 60.0
# getpeercert()'s SAN kinds, by the name auth.mtls.identity gives them.
_SAN_KINDS = {"uri": "URI", "dns": "DNS", "email": "email", "ip": "IP Address"}


class AuthFailure(Exception):
    """A refusal; ``reason`` is one fixed word (a metrics label), never client input."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.DecodeError, "malformed"),
)


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid"


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """OAuth2 scopes: ``scope`` (RFC 8693: space-separated) or ``scp`` (a list, or a string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)


class JwtVerifier:
    """Bearer tokens of one ``auth.jwt`` section → the caller's identity.

    Tokens that passed every check are remembered (:mod:`prism.proxy.tokencache`): a token
    seen before is checked against the clock (``exp``, ``nbf``) and the key set's generation
    only. ``clock``: wall-clock seconds, what those checks read (``time.time``; tests give
    their own to move past a token's ``exp``)."""

    def __init__(
        self,
        config: JwtConfig,
        *,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = Keys(config)
        self._algorithms = frozenset(config.algorithms)
        self._audience = list(config.audience)
        self._options: Any = {"require": ["exp", "iss", "aud"]}
        self.verified = VerifiedTokens(cache_size)
        self._clock = clock

    def remembered(self, token: str) -> Identity | None:
        """The identity of a token verified before and valid now (no coroutine: the path of
        every call after a client's first); None when it must be verified; AuthFailure when
        it was verified but its ``exp`` (or ``nbf``) says no now."""
        known = self.verified.get(token, self._clock(), self.keys.generation)
        if known is None or isinstance(known, Identity):
            return known
        raise AuthFailure(known, "remembered token")  # its exp/nbf are known: no new check

    async def verify(self, token: str) -> Identity:
        """The identity the token gives (its subject, claims and scopes; no SANs);
        AuthFailure with the reason otherwise."""
        known = self.remembered(token)
        if known is not None:
            return known
        claims, generation = await self._decode(token)
        named = claims.get(self.config.subject_claim)
        if not isinstance(named, str) or not named:
            raise AuthFailure("missing_claim", f"no string {self.config.subject_claim!r} claim")
        identity = Identity(named, "jwt", claims=MappingProxyType(claims), scopes=scopes_of(claims))
        leeway = self.config.leeway
        expires = claims["exp"] + leeway  # required, and a number: PyJWT checked it
        nbf = claims.get("nbf")
        not_before = nbf - leeway if isinstance(nbf, int | float) else -math.inf
        self.verified.put(token, identity, not_before, float(expires), generation)
        return identity

    async def _decode(self, token: str) -> tuple[dict[str, Any], int]:
        """The verified claims, and the generation of the key set that verified them."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailure("malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise AuthFailure("algorithm", f"alg {shown!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "kid is not a string")
        keys = self.keys
        generation = keys.generation
        candidates = keys.keyset.candidates(kid, alg)
        if kid is not None and not keys.keyset.knows(kid) and await keys.refetch():
            generation = keys.generation
            candidates = keys.keyset.candidates(kid, alg)
        if not candidates:
            shown = repr(kid[:64]) if kid is not None else "none"
            raise AuthFailure("unknown_kid" if kid is not None else "no_key", f"kid {shown}")
        config = self.config
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self._audience,
                    issuer=config.issuer,
                    leeway=config.leeway,
                    options=self._options,
                )
            except jwt.InvalidSignatureError:
                continue  # another key of the same kind may have signed it
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise AuthFailure(_reason(exc), type(exc).__name__) from None
            return claims, generation
        raise AuthFailure("bad_signature")


def certificate_sans(cert: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """A ``getpeercert()`` dict's subject alternative names, as ``("URI", "spiffe://...")``."""
    if not cert:
        return ()
    return tuple((str(kind), str(value)) for kind, value in cert.get("subjectAltName", ()))


def certificate_subject(
    cert: Mapping[str, Any], sans: tuple[tuple[str, str], ...], order: tuple[str, ...]
) -> str | None:
    """The first name of ``order``'s kinds the certificate has (``cn``: its subject CN)."""
    for name in order:
        if name == "cn":
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName" and value:
                        return str(value)
            continue
        kind = _SAN_KINDS[name]
        for san_kind, value in sans:
            if san_kind == kind and value:
                return value
    return None


class LogBudget:
    """How many refusals of each reason may still be logged in the current window."""

    def __init__(self) -> None:
        # reason -> (window start, lines logged in it, refusals not logged since the last line)
        self._reasons: dict[str, tuple[float, int, int]] = {}

    def admit(self, reason: str, now: float) -> int | None:
        """None: do not log this one; else log it, with this many not logged before it."""
        start, logged, skipped = self._reasons.get(reason, (now, 0, 0))
        if now - start >= LOG_WINDOW:
            start, logged = now, 0
        if logged >= LOG_BURST:
            self._reasons[reason] = (start, logged, skipped + 1)
            return None
        self._reasons[reason] = (start, logged + 1, 0)
        return skipped


class Authentication:
    """The proxy's authenticator (module docstring)."""

    def __init__(
        self,
        metrics: ProxyMetrics,
        *,
        mtls: MtlsConfig,
        jwt_config: JwtConfig | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        self._metrics = metrics
        self._identity_order = mtls.identity
        self.jwt = JwtVerifier(jwt_config) if jwt_config is not None else None
        self._allow_anonymous = allow_anonymous
        self._log_budget = LogBudget()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The JWKS URL's fetches (:meth:`prism.proxy.jwks.Keys.run`), if there is one."""
        if self.jwt is None:
            task_status.started()
            return
        await self.jwt.keys.run(task_status=task_status)

    def stop(self) -> None:
        """End :meth:`run`: a config reload replaced this authenticator."""
        if self.jwt is not None:
            self.jwt.keys.stop()

    async def authenticate(self, call: ServerCall, info: RequestInfo) -> Identity:
        try:
            return await self._identify(call, info)
        except AuthFailure as failure:
            self._metrics.auth_failed(failure.reason)
            skipped = self._log_budget.admit(failure.reason, trio.current_time())
            if skipped is not None:
                level = logging.INFO if failure.reason == "missing" else logging.WARNING
                log.log(
                    level,
                    "authentication failed for %s: %s%s%s",
                    info.peer.address,
                    failure.reason,
                    f" ({failure.detail})" if failure.detail else "",
                    f"; {skipped} more not logged" if skipped else "",
                )
            raise Unauthenticated(GENERIC) from None

    async def _identify(self, call: ServerCall, info: RequestInfo) -> Identity:
        cert = info.peer.certificate
        sans = certificate_sans(cert)
        if self.jwt is not None:
            values = [value for key, value in call.metadata if key == "authorization"]
            if len(values) > 1:
                raise AuthFailure("malformed", "more than one authorization entry")
            if values:
                token = _bearer(values[0])
                identity = self.jwt.remembered(token) or await self.jwt.verify(token)
                return dataclasses.replace(identity, sans=sans) if sans else identity
        if cert:
            name = certificate_subject(cert, sans, self._identity_order)
            if name is None:
                raise AuthFailure("certificate_identity", "no name of auth.mtls.identity's kinds")
            return Identity(name, "mtls", sans=sans)
        if self._allow_anonymous:
            return ANONYMOUS
        raise AuthFailure("missing")


def _bearer(value: str | bytes) -> str:
    if not isinstance(value, str) or len(value) > MAX_TOKEN_BYTES:
        raise AuthFailure("malformed", "authorization is not a bearer token of a sane size")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthFailure("malformed", "authorization is not 'Bearer <token>'")
    return token


def build_authenticator(config: ProxyConfig, metrics: ProxyMetrics) -> Authenticator:
    """The authenticator ``config`` asks for: none (everyone is anonymous) when it has neither
    ``auth.jwt`` nor client certificates (``tls.client_ca``). ConfigError for a key file that
    cannot be read."""
    auth = config.auth
    mtls = config.tls is not None and config.tls.client_ca is not None
    if auth.jwt is None and not mtls:
        return NoAuthentication()
    return Authentication(
        metrics,
        mtls=auth.mtls,
        jwt_config=auth.jwt,
        allow_anonymous=any(ns.access.anonymous for ns in config.namespaces),
    )
