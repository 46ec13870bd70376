"""The public keys bearer JWTs are verified with: PEM files, a JWKS file, a JWKS URL.

A JWKS URL is fetched with httpx on Trio (PyJWT's own ``PyJWKClient`` fetches with blocking
urllib, which would stall every call on the event loop), by :meth:`Keys.run`: once before the
proxy listens, then again when the key set's ``Cache-Control: max-age`` (bounded by
``jwks_cache_min`` and ``jwks_cache_max``) runs out, and when a token names a ``kid`` nobody
knows (:meth:`Keys.refetch`, at most once per ``jwks_refetch_interval``: a stream of tokens
with made-up ``kid`` values must not turn the proxy into a load generator against the
issuer). A failed fetch keeps the keys already held and is retried after
``jwks_refetch_interval``.

Only asymmetric keys are ever loaded: a JWKS's symmetric (``oct``) and encryption (``use:
enc``) keys are skipped, and :func:`fits` pairs each algorithm with its key type and curve.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from prism.config._model import ConfigError
from prism.config.auth import JwtConfig

__all__ = ["Key", "Keys", "fits", "load_pem_key", "max_age", "parse_jwks"]

log = logging.getLogger("prism.proxy.authn")

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
#: Largest JWKS document read (a real one is a few KiB).
MAX_JWKS_BYTES = 1 << 20
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$)", re.IGNORECASE)


class JwksError(Exception):
    """A key set could not be fetched or read (the message says why; it holds no key)."""


@dataclass(frozen=True, slots=True)
class Key:
    """One verification key. ``kid``: the JWK's key id (None for a PEM key); ``alg``: the
    algorithm the JWK is restricted to, when it names one."""

    key: PublicKey
    kid: str | None = None
    alg: str | None = None


def fits(alg: str, key: Key) -> bool:
    """Whether ``key`` may verify a signature made with ``alg``."""
    if key.alg is not None and key.alg != alg:
        return False
    public = key.key
    if alg[:2] in ("RS", "PS"):
        return isinstance(public, rsa.RSAPublicKey)
    if alg in _CURVES:
        return isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == _CURVES[alg]
    if alg == "EdDSA":
        return isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def _public(key: object, where: str) -> PublicKey:
    if isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return key
    raise ConfigError(f"{where}: not an RSA, EC or EdDSA public key")


def load_pem_key(path: Path, where: str) -> Key:
    """A PEM public key or certificate; ConfigError naming ``where`` (never the content)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{where}: {path} holds a private key; give the public key only")
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            return Key(_public(x509.load_pem_x509_certificate(data).public_key(), where))
        return Key(_public(serialization.load_pem_public_key(data), where))
    except ValueError:
        raise ConfigError(f"{where}: {path} is not a PEM public key or certificate") from None


def parse_jwks(document: object) -> list[Key]:
    """The usable verification keys of a JWKS document (parsed JSON); JwksError when it is
    not one. Keys that cannot verify an asymmetric signature are skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError('not a JWKS document (expected {"keys": [...]})')
    keys: list[Key] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # "oct" (a shared secret) is never a verification key here
        if jwk.get("use", "sig") != "sig":
            continue
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if not isinstance(kid, str | None) or not isinstance(alg, str | None):
            continue
        try:
            parsed = jwt.PyJWK(dict(jwk))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        public = parsed.key
        if hasattr(public, "public_key"):
            # A JWK with private members gives a private key: verify with its public half.
            public = public.public_key()
        try:
            keys.append(Key(_public(public, "jwks"), kid, alg))
        except ConfigError:
            continue
    return keys


def load_jwks_file(path: Path, where: str) -> list[Key]:
    try:
        return parse_jwks(json.loads(path.read_bytes()))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, JwksError) as exc:
        raise ConfigError(f"{where}: {path}: {exc}") from None


def max_age(cache_control: str | None) -> float | None:
    """Seconds a response may be cached for, from its Cache-Control (0 for no-cache and
    no-store), or None when it does not say."""
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


class KeySet:
    """Keys by ``kid``; PEM keys (which have none) are candidates for every token."""

    def __init__(self, keys: Iterable[Key]) -> None:
        self.by_kid: dict[str, list[Key]] = {}
        self.unnamed: list[Key] = []
        for key in keys:
            if key.kid is None:
                self.unnamed.append(key)
            else:
                self.by_kid.setdefault(key.kid, []).append(key)

    def candidates(self, kid: str | None, alg: str) -> list[Key]:
        named = self.by_kid.get(kid, []) if kid is not None else []
        if kid is None:
            named = [key for keys in self.by_kid.values() for key in keys]
        return [key for key in (*named, *self.unnamed) if fits(alg, key)]

    def knows(self, kid: str) -> bool:
        return kid in self.by_kid


class Keys:
    """The keys of one ``auth.jwt`` section: the static ones (``keys``, ``jwks_file``, read
    here), and those fetched from ``jwks_url`` by :meth:`run`. ``generation`` changes whenever
    the key set does (a cache of verified tokens is kept per generation)."""

    def __init__(self, config: JwtConfig) -> None:
        static: list[Key] = [
            load_pem_key(path, f"auth.jwt.keys[{i}]") for i, path in enumerate(config.keys)
        ]
        if config.jwks_file is not None:
            static += load_jwks_file(config.jwks_file, "auth.jwt.jwks_file")
        self._config = config
        self._static = static
        self.keyset = KeySet(static)
        self.generation = 0
        self.url = config.jwks_url
        #: The URL as logs show it: without user info or query (either may hold a secret).
        self.shown_url = _shown(self.url) if self.url is not None else ""
        self._ssl: ssl.SSLContext | None = None
        if self.url is not None and config.jwks_ca is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=config.jwks_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"auth.jwt.jwks_ca: cannot load {config.jwks_ca}: {exc}"
                ) from None
        self._last_attempt = -float("inf")
        self._next_refresh = float("inf")
        self._wake = trio.Event()
        self._done = trio.Event()
        self._running = False
        self._fetching = False
        self._stop = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch ``jwks_url`` now (``started`` once that attempt is over, whether it worked:
        a JWKS outage must not keep the proxy from serving certificate callers), then keep it
        fresh until cancelled or :meth:`stop`. Returns at once without a URL."""
        if self.url is None:
            task_status.started()
            return
        self._running = True
        try:
            with self._stop:
                await self._attempt()
                task_status.started()
                while True:
                    with trio.move_on_at(self._next_refresh):
                        await self._wake.wait()
                    await self._attempt()
                    # A wake-up that came while fetching was answered by this fetch.
                    self._wake = trio.Event()
        finally:
            self._running = False
            self._done.set()  # a call waiting for a refetch gets the keys held

    def stop(self) -> None:
        """End :meth:`run` (its fetches and refreshes): a config reload replaced this key set.
        Tokens are still verified with the keys held."""
        self._stop.cancel()

    async def refetch(self) -> bool:
        """For a token whose ``kid`` no key has: fetch the JWKS again now and wait for it,
        unless a fetch was attempted in the last ``jwks_refetch_interval`` (False then)."""
        if self.url is None or not self._running:
            return False
        if not self._fetching:
            if trio.current_time() - self._last_attempt < self._config.jwks_refetch_interval:
                return False
            self._fetching = True
            self._wake.set()
        # A fetch asked for or under way (perhaps by another call with this kid): its answer.
        await self._done.wait()
        return True

    async def _attempt(self) -> None:
        config = self._config
        self._fetching = True
        now = self._last_attempt = trio.current_time()
        try:
            keys, age = await self._fetch()
        except Exception as exc:  # whatever the issuer sent, the proxy goes on serving
            if not isinstance(exc, JwksError):
                exc = JwksError(_describe(exc))
            self._next_refresh = now + config.jwks_refetch_interval
            log.warning(
                "JWKS fetch from %s failed: %s (keeping the %d keys held; retry in %gs)",
                self.shown_url,
                exc,
                len(self.keyset.by_kid) + len(self.keyset.unnamed),
                config.jwks_refetch_interval,
            )
        else:
            self.keyset = KeySet([*self._static, *keys])
            self.generation += 1
            cache = config.jwks_cache_max if age is None else age
            cache = min(max(cache, config.jwks_cache_min), config.jwks_cache_max)
            self._next_refresh = now + cache
            log.info("JWKS from %s: %d keys, next refresh in %gs", self.shown_url, len(keys), cache)
        finally:
            self._fetching = False
            done, self._done = self._done, trio.Event()
            done.set()

    async def _fetch(self) -> tuple[list[Key], float | None]:
        assert self.url is not None
        body = bytearray()
        with trio.move_on_after(self._config.jwks_fetch_timeout) as scope:
            try:
                async with (
                    httpx.AsyncClient(
                        verify=self._ssl if self._ssl is not None else True,
                        follow_redirects=False,
                        timeout=None,  # the cancel scope above is the deadline
                    ) as client,
                    client.stream("GET", self.url, headers={"accept": "application/json"}) as r,
                ):
                    if r.status_code != 200:
                        raise JwksError(f"HTTP status {r.status_code}")
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_JWKS_BYTES:
                            raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
                    cache_control = r.headers.get("cache-control")
            except httpx.HTTPError as exc:
                raise JwksError(_describe(exc).replace(self.url, self.shown_url)) from None
        if scope.cancelled_caught:
            raise JwksError(f"no answer within {self._config.jwks_fetch_timeout:g}s")
        try:
            document: Any = json.loads(body)
        except ValueError:
            raise JwksError("not JSON") from None
        keys = parse_jwks(document)
        if not keys:
            raise JwksError("no usable signature key in it")
        return keys, max_age(cache_control)


def _describe(exc: BaseException) -> str:
    """An httpx error in words: its own message is often empty (a failed TLS handshake under
    Trio), the cause it wraps has the reason."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if str(seen):
            return f"{type(exc).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _shown(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
