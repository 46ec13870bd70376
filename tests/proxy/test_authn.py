"""Authentication through the real front door (``prism.proxy.app.Proxy``) over real sockets:
client certificates from trustme (mTLS), bearer JWTs made with PyJWT and cryptography keys,
checked against PEM keys and a JWKS file. Every refusal is UNAUTHENTICATED with the same
generic message, its reason is logged and counted, and no token reaches a log or the client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from authn_testkit import (
    AUDIENCE,
    ISSUER,
    Pki,
    Signer,
    config,
    ec_signer,
    ed_signer,
    jwks,
    make_pki,
    round_trip,
    rsa_signer,
    running,
)
from cryptography.hazmat.primitives import serialization

import prism.client
from prism._proto.prism.data.v1 import GetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest
from prism.config import ConfigError
from prism.config.auth import AuthConfig, JwtConfig, MtlsConfig
from prism.proxy.app import Proxy
from prism.proxy.authn import GENERIC, LOG_BURST, LOG_WINDOW, AuthFailure, JwtVerifier
from prism.sdk.typed import pack

SPIFFE = "spiffe://example.org/ns/prod/sa/orders"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand: ``alg: none`` (no secret) or HS256 over ``secret``."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def valid_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600}
    claims.update(changes)
    return claims


# -- mTLS -----------------------------------------------------------------------------------


async def test_authn_mtls_identity_from_san_uri_first(pki: Pki) -> None:
    cert = pki.client_custom("uri", uris=(SPIFFE,), dns=("orders.internal",), cn="orders")
    async with running(config(pki=pki)) as proxy:
        assert await round_trip(proxy.target, ca=pki.ca_file, cert=cert) == b"v"
        identity = proxy.recorder.identities[-1]
    assert (identity.subject, identity.source) == (SPIFFE, "mtls")
    assert identity.sans == (("URI", SPIFFE), ("DNS", "orders.internal"))
    assert identity.claims == {}


async def test_authn_mtls_identity_from_san_dns_without_uri(pki: Pki) -> None:
    cert = pki.client("dns", "orders.internal", common_name="orders")
    async with running(config(pki=pki)) as proxy:
        await round_trip(proxy.target, ca=pki.ca_file, cert=cert)
        identity = proxy.recorder.identities[-1]
    assert (identity.subject, identity.source) == ("orders.internal", "mtls")


async def test_authn_mtls_identity_from_cn_without_sans(pki: Pki) -> None:
    cert = pki.client_custom("cn", cn="orders-service")
    async with running(config(pki=pki)) as proxy:
        await round_trip(proxy.target, ca=pki.ca_file, cert=cert)
        identity = proxy.recorder.identities[-1]
    assert (identity.subject, identity.source, identity.sans) == ("orders-service", "mtls", ())


async def test_authn_mtls_identity_order_is_configurable(pki: Pki) -> None:
    cert = pki.client_custom("uri", uris=(SPIFFE,), dns=("orders.internal",), cn="orders")
    auth = AuthConfig(mtls=MtlsConfig(identity=("cn", "uri")))
    async with running(config(pki=pki, auth=auth)) as proxy:
        await round_trip(proxy.target, ca=pki.ca_file, cert=cert)
        assert proxy.recorder.identities[-1].subject == "orders"


async def test_authn_mtls_certificate_without_a_configured_name_is_refused(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    cert = pki.client("dns", "orders.internal", common_name="orders")
    auth = AuthConfig(mtls=MtlsConfig(identity=("uri",)))
    async with running(config(pki=pki, auth=auth)) as proxy:
        with pytest.raises(prism.client.Unauthenticated) as refused:
            await round_trip(proxy.target, ca=pki.ca_file, cert=cert)
        assert refused.value.message == GENERIC
        assert proxy.failures("certificate_identity") == 1
    assert "certificate_identity" in caplog.text


async def test_authn_mtls_certificate_from_another_ca_is_refused_at_tls(
    pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    stranger = other.client("stranger", "orders.internal")
    good = pki.client("good", "orders.internal")
    async with running(config(pki=pki)) as proxy:
        with pytest.raises(prism.client.Unavailable):
            await round_trip(proxy.target, ca=pki.ca_file, cert=stranger)
        with pytest.raises(prism.client.Unavailable):
            await round_trip(proxy.target, ca=pki.ca_file)  # no certificate at all
        # Nothing got as far as authentication, and the front door still serves.
        assert proxy.recorder.identities == []
        assert await round_trip(proxy.target, ca=pki.ca_file, cert=good) == b"v"


# -- JWT: keys, algorithms, claims ------------------------------------------------------------


def jwt_auth(tmp_path: Path, *signers: Signer, **settings: Any) -> AuthConfig:
    """``auth.jwt`` trusting ``signers``: those without a kid as PEM keys, the others in a
    JWKS file."""
    pems = [s.public_pem(tmp_path / f"key{i}.pem") for i, s in enumerate(signers) if s.kid is None]
    named = [s for s in signers if s.kid is not None]
    jwks_file = None
    if named:
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(json.dumps(jwks(*named)))
    fields: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "keys": tuple(pems)}
    fields.update(jwks_file=jwks_file, **settings)
    return AuthConfig(jwt=JwtConfig(**fields))


@pytest.mark.parametrize(
    "make", [rsa_signer, ec_signer, ed_signer], ids=["RS256", "ES256", "EdDSA"]
)
async def test_authn_jwt_valid_token_gives_its_subject_claims_and_scopes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    named, pem = make(), make(kid=None)
    tokens = []
    async with running(config(auth=jwt_auth(tmp_path, named, pem))) as proxy:
        for signer in (named, pem):
            token = signer.token(scope="kv:read kv:write", tenant="acme")
            tokens.append(token)
            assert await round_trip(proxy.target, token=token) == b"v"
            identity = proxy.recorder.identities[-1]
            assert (identity.subject, identity.source) == ("alice", "jwt")
            assert identity.scopes == {"kv:read", "kv:write"}
            assert identity.claims["tenant"] == "acme"
            assert token not in repr(identity)
    for token in tokens:
        assert token.split(".")[2] not in caplog.text


async def test_authn_jwt_scp_list_claim_gives_scopes(tmp_path: Path) -> None:
    signer = ec_signer()
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        await round_trip(proxy.target, token=signer.token(scp=["a", "b"]))
        assert proxy.recorder.identities[-1].scopes == {"a", "b"}


def refusals(signer: Signer, other: Signer) -> dict[str, tuple[str, str]]:
    """Bad credentials, by test id → (token or raw authorization value, reason)."""
    now = int(time.time())
    public_pem = signer.public_pem_bytes()
    header = {"kid": signer.kid, "typ": "JWT"}
    return {
        "expired": (signer.token(exp=now - 120), "expired"),
        "not_yet_valid": (signer.token(nbf=now + 120), "not_yet_valid"),
        "wrong_issuer": (signer.token(iss="https://evil.test"), "issuer"),
        "wrong_audience": (signer.token(aud="someone-else"), "audience"),
        "no_exp": (signer.token(exp=None), "missing_claim"),
        "no_subject": (signer.token(sub=None), "missing_claim"),
        # Signed by another key under the trusted key's kid.
        "bad_signature": (Signer(other.key, signer.kid, other.alg).token(), "bad_signature"),
        "alg_none": (forged({**header, "alg": "none"}, valid_claims(), None), "algorithm"),
        # The classic confusion: the public key (known to everyone) as an HMAC secret.
        "hs256_public_key": (
            forged({**header, "alg": "HS256"}, valid_claims(), public_pem),
            "algorithm",
        ),
        "unknown_kid": (Signer(other.key, "nobody", other.alg).token(), "unknown_kid"),
        "garbage": ("not-a-jwt", "malformed"),
    }


CASES = list(refusals(ec_signer(), ec_signer()))


@pytest.mark.parametrize("case", CASES)
async def test_authn_jwt_bad_token_is_unauthenticated_with_a_generic_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    signer, other = ec_signer(), ec_signer(kid="other")
    token, reason = refusals(signer, other)[case]
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        with pytest.raises(prism.client.Unauthenticated) as refused:
            await round_trip(proxy.target, token=token)
        assert refused.value.message == GENERIC
        assert proxy.failures(reason) == 1
        # A refused caller does not disturb the next one.
        assert await round_trip(proxy.target, token=signer.token()) == b"v"
    assert "authentication failed for 127.0.0.1:" in caplog.text
    assert f": {reason}" in caplog.text
    for part in token.split("."):
        if len(part) > 8:  # an empty signature, or a short header, is no secret
            assert part not in caplog.text
            assert part not in str(refused.value)


def authn_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prism.proxy.authn"]


async def test_authn_refusals_are_logged_within_a_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0
    signer = ec_signer()
    expired = signer.token(exp=int(time.time()) - 600)
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        for _ in range(LOG_BURST + 5):
            with pytest.raises(prism.client.Unauthenticated):
                await round_trip(proxy.target, token=expired)
        assert len(authn_lines(caplog)) == LOG_BURST
        assert proxy.failures("expired") == LOG_BURST + 5  # every one is counted
        # Another reason has a budget of its own.
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=signer.token(aud="x"))
        assert authn_lines(caplog)[-1].endswith(": audience (InvalidAudienceError)")

        mock_clock.jump(LOG_WINDOW)
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=expired)
        assert authn_lines(caplog)[-1].endswith("; 5 more not logged")


async def test_authn_jwt_missing_token_is_unauthenticated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    signer = ec_signer()
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        with pytest.raises(prism.client.Unauthenticated) as refused:
            await round_trip(proxy.target)
        assert refused.value.message == GENERIC
        assert proxy.failures("missing") == 1
    assert ": missing" in caplog.text


async def test_authn_jwt_not_a_bearer_value_is_refused(tmp_path: Path) -> None:
    signer = ec_signer()
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        basic = [("authorization", "Basic " + b64(b"user:pass"))]
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, metadata=basic)
        assert proxy.failures("malformed") == 1


async def test_authn_jwt_algorithm_not_configured_is_refused(tmp_path: Path) -> None:
    signer = rsa_signer()
    auth = jwt_auth(tmp_path, signer, algorithms=("ES256",))
    async with running(config(auth=auth)) as proxy:
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=signer.token())
        assert proxy.failures("algorithm") == 1


async def test_authn_jwt_key_of_another_type_never_verifies(tmp_path: Path) -> None:
    # An RSA key in the set, a token claiming ES256 under its kid: no EC key, no verification.
    rsa_key = rsa_signer(kid="k")
    claimed = Signer(ec_signer().key, "k", "ES256")
    async with running(config(auth=jwt_auth(tmp_path, rsa_key))) as proxy:
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=claimed.token())
        assert proxy.failures("unknown_kid") == 1


@pytest.mark.parametrize(("leeway", "accepted"), [(30.0, True), (0.0, False)])
async def test_authn_jwt_leeway_covers_clock_skew(
    tmp_path: Path, leeway: float, accepted: bool
) -> None:
    signer = ec_signer()
    token = signer.token(exp=int(time.time()) - 5)  # expired 5 s ago
    async with running(config(auth=jwt_auth(tmp_path, signer, leeway=leeway))) as proxy:
        if accepted:
            assert await round_trip(proxy.target, token=token) == b"v"
        else:
            with pytest.raises(prism.client.Unauthenticated):
                await round_trip(proxy.target, token=token)


async def test_authn_jwt_audience_list_accepts_any_of_them(tmp_path: Path) -> None:
    signer = ec_signer()
    auth = jwt_auth(tmp_path, signer, audience=("other", AUDIENCE))
    async with running(config(auth=auth)) as proxy:
        assert await round_trip(proxy.target, token=signer.token(aud=[AUDIENCE, "x"])) == b"v"


def grpcio_call(target: str, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    """An Execute ``get`` from grpcio (a gRPC implementation nobody here wrote)."""
    request = ExecuteRequest(
        namespace="kv", operation="get", typed_params=pack(GetRequest(key="k"))
    )
    with grpc.insecure_channel(target) as channel:
        execute = channel.unary_unary("/prism.proxy.v1.DataProxy/Execute")
        try:
            execute(bytes(request), metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, ""


async def test_authn_jwt_from_grpcio_call_metadata(tmp_path: Path) -> None:
    signer = ec_signer()
    token = signer.token()
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        bearer = [("authorization", f"Bearer {token}")]
        ok = await trio.to_thread.run_sync(grpcio_call, proxy.target, bearer)
        assert ok == (grpc.StatusCode.OK, "")
        assert proxy.recorder.identities[-1].subject == "alice"
        expired = [("authorization", f"Bearer {signer.token(exp=int(time.time()) - 600)}")]
        refused = await trio.to_thread.run_sync(grpcio_call, proxy.target, expired)
        assert refused == (grpc.StatusCode.UNAUTHENTICATED, GENERIC)
        missing = await trio.to_thread.run_sync(grpcio_call, proxy.target, [])
        assert missing == (grpc.StatusCode.UNAUTHENTICATED, GENERIC)


# -- anonymous callers and certificates beside tokens -----------------------------------------


async def test_authn_no_credentials_is_anonymous_where_a_namespace_admits_it(
    tmp_path: Path,
) -> None:
    signer = ec_signer()
    async with running(config(auth=jwt_auth(tmp_path, signer), anonymous=True)) as proxy:
        assert await round_trip(proxy.target) == b"v"
        assert proxy.recorder.identities[-1].anonymous
        # A bad token is still refused: credentials, once given, must be valid.
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=signer.token(exp=int(time.time()) - 600))


async def test_authn_nothing_configured_every_caller_is_anonymous() -> None:
    async with running(config(anonymous=True)) as proxy:
        # Without auth.jwt, an authorization entry is not read at all.
        assert await round_trip(proxy.target, token="whatever") == b"v"
        assert proxy.recorder.identities[-1].anonymous


async def test_authn_jwt_with_mtls_uses_the_certificate_without_a_token(
    pki: Pki, tmp_path: Path
) -> None:
    signer = ec_signer()
    cert = pki.client_custom("uri", uris=(SPIFFE,), cn="orders")
    async with running(config(pki=pki, auth=jwt_auth(tmp_path, signer))) as proxy:
        tls: dict[str, Any] = {"ca": pki.ca_file, "cert": cert}
        await round_trip(proxy.target, **tls)
        assert proxy.recorder.identities[-1].subject == SPIFFE
        # With a token, the token names the caller; the certificate's SANs come along.
        await round_trip(proxy.target, token=signer.token(), **tls)
        identity = proxy.recorder.identities[-1]
        assert (identity.subject, identity.source) == ("alice", "jwt")
        assert identity.sans == (("URI", SPIFFE),)
        # An invalid token is refused, whatever certificate the connection has.
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=signer.token(aud="x"), **tls)


async def test_authn_identity_holds_across_concurrent_callers(tmp_path: Path) -> None:
    signer = ec_signer()
    async with running(config(auth=jwt_auth(tmp_path, signer))) as proxy:
        async with trio.open_nursery() as nursery:
            for name in ("alice", "bob", "carol"):
                nursery.start_soon(
                    lambda n=name: round_trip(proxy.target, token=signer.token(sub=n))
                )
        assert {i.subject for i in proxy.recorder.identities} == {"alice", "bob", "carol"}


# -- configuration ----------------------------------------------------------------------------


def test_authn_config_refuses_a_private_key_file(tmp_path: Path) -> None:
    signer = ec_signer(kid=None)
    path = tmp_path / "private.pem"
    path.write_bytes(
        signer.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    auth = AuthConfig(jwt=JwtConfig(issuer=ISSUER, audience=AUDIENCE, keys=(path,)))
    with pytest.raises(ConfigError, match=r"auth\.jwt\.keys\[0\]: .* private key"):
        Proxy(config(auth=auth))


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"algorithms": ["HS256"]}, "algorithms[0]: 'HS256' is not one of"),
        ({"algorithms": ["none"]}, "algorithms[0]: 'none' is not one of"),
        ({"keys": []}, "keys: give keys, jwks_file or jwks_url"),
        ({"jwks_url": "http://issuer.example/jwks"}, "jwks_url: expected an https:// URL"),
        ({"jwks_url": "https://u:p@issuer.example/jwks"}, "jwks_url: no user or password"),
        ({"leeway": 301}, "leeway:"),
        ({"jwks_cache_min": 600, "jwks_cache_max": 60}, "jwks_cache_min: greater than"),
        ({"audience": []}, "audience: name at least one audience"),
    ],
)
def test_authn_config_errors_name_the_field(fields: dict[str, Any], error: str) -> None:
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "keys": ["k.pem"]}
    settings.update(fields)
    with pytest.raises(ConfigError) as raised:
        JwtConfig(**settings)
    assert error in str(raised.value)


# -- the verified-token cache (prism/proxy/tokencache.py) as the verifier uses it -------------


class Clock:
    """Wall-clock seconds the verifier's cache checks read; PyJWT reads the real clock."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def cached_verifier(tmp_path: Path, signer: Signer, clock: Clock) -> JwtVerifier:
    pem = signer.public_pem(tmp_path / "key.pem")
    return JwtVerifier(
        JwtConfig(issuer=ISSUER, audience=AUDIENCE, keys=(pem,), leeway=30), clock=clock
    )


async def test_authn_cache_remembers_a_verified_token_once(tmp_path: Path) -> None:
    signer = ec_signer(kid=None)
    verifier = cached_verifier(tmp_path, signer, Clock())
    token = signer.token()
    first = await verifier.verify(token)
    assert first.subject == "alice"
    assert await verifier.verify(token) is first  # the remembered identity, not verified again
    assert len(verifier.verified) == 1


async def test_authn_cache_expired_token_is_refused_even_when_remembered(tmp_path: Path) -> None:
    signer = ec_signer(kid=None)
    clock = Clock()
    verifier = cached_verifier(tmp_path, signer, clock)
    exp = int(clock.now) + 60
    token = signer.token(exp=exp)
    assert (await verifier.verify(token)).subject == "alice"
    clock.now = exp + 29.5  # within the leeway: still good
    assert (await verifier.verify(token)).subject == "alice"
    clock.now = exp + 30  # the token's exp plus the leeway: never accepted from here on
    for _ in range(2):
        with pytest.raises(AuthFailure) as refused:
            await verifier.verify(token)
        assert refused.value.reason == "expired"


async def test_authn_cache_not_yet_valid_token_is_refused_when_the_clock_goes_back(
    tmp_path: Path,
) -> None:
    signer = ec_signer(kid=None)
    clock = Clock()
    verifier = cached_verifier(tmp_path, signer, clock)
    nbf = int(clock.now) - 10
    token = signer.token(nbf=nbf)
    await verifier.verify(token)
    clock.now = nbf - 31  # before nbf minus the leeway
    with pytest.raises(AuthFailure) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "not_yet_valid"


async def test_authn_cache_bad_tokens_are_never_remembered(tmp_path: Path) -> None:
    signer, other = ec_signer(kid=None), ec_signer(kid=None)
    verifier = cached_verifier(tmp_path, signer, Clock())
    good = signer.token()
    # The good token's header and claims under another key's signature.
    head, claims, _ = good.split(".")
    bad_signature = f"{head}.{claims}.{other.token().split('.')[2]}"
    bad = {
        "bad_signature": bad_signature,
        "expired": signer.token(exp=int(time.time()) - 120),
        "missing_claim": signer.token(sub=None),
        "issuer": signer.token(iss="https://evil.test"),
    }
    for _ in range(2):  # refused the second time too: nothing was remembered
        for reason, token in bad.items():
            with pytest.raises(AuthFailure) as refused:
                await verifier.verify(token)
            assert refused.value.reason == reason
    assert len(verifier.verified) == 0
    # A remembered good token does not vouch for a forged one with its header and claims.
    await verifier.verify(good)
    with pytest.raises(AuthFailure) as refused:
        await verifier.verify(bad_signature)
    assert refused.value.reason == "bad_signature"
    assert len(verifier.verified) == 1
