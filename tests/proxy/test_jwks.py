"""Keys from a JWKS URL: a real JWKS served over HTTP (h11 on Trio) in the test, fetched by the
proxy with httpx on Trio at start, refreshed in the background when its max-age runs out, and
re-fetched at most once per ``jwks_refetch_interval`` when a token names an unknown ``kid``.

Time is Trio's MockClock running at real speed (``rate = 1``), moved ahead with ``jump`` where
the test needs the cache or the rate limit to run out: nothing waits for real seconds."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from authn_testkit import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    Running,
    config,
    ec_signer,
    jwks,
    make_pki,
    round_trip,
    rsa_signer,
    running,
)

import prism.client
from prism.config.auth import AuthConfig, JwtConfig
from prism.proxy.authn import AuthFailure, JwtVerifier
from prism.proxy.jwks import max_age, parse_jwks


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.rate = 1.0
    return mock_clock


class OnRecord(logging.Handler):
    """Sets ``event`` when a record whose message starts with ``prefix`` is logged."""

    def __init__(self, event: trio.Event, prefix: str) -> None:
        super().__init__()
        self.event, self.prefix = event, prefix

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.event.set()


@asynccontextmanager
async def proxy_with_jwks(server: JwksServer, **settings: Any) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        jwt = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=server.url, **settings)
        async with running(config(auth=AuthConfig(jwt=jwt))) as proxy:
            yield proxy
        nursery.cancel_scope.cancel()


async def test_jwks_url_is_fetched_before_the_proxy_listens(clock: trio.testing.MockClock) -> None:
    k1 = ec_signer("k1")
    server = JwksServer(jwks(k1, rsa_signer("r1")))
    async with proxy_with_jwks(server) as proxy:
        assert server.fetches == 1
        assert await round_trip(proxy.target, token=k1.token()) == b"v"
        assert proxy.recorder.identities[-1].subject == "alice"
        assert server.fetches == 1  # a known kid fetches nothing


async def test_jwks_unknown_kid_refetches_rate_limited_and_picks_up_rotation(
    clock: trio.testing.MockClock,
) -> None:
    k1, k2 = ec_signer("k1"), ec_signer("k2")
    server = JwksServer(jwks(k1))
    async with proxy_with_jwks(server, jwks_refetch_interval=30) as proxy:
        assert server.fetches == 1
        server.document = jwks(k1, k2)  # the issuer rotates in a new key
        # Right after the fetch at start: the re-fetch is rate-limited, the token refused.
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=k2.token())
        assert server.fetches == 1
        assert proxy.failures("unknown_kid") == 1

        clock.jump(31)
        # Now the unknown kid fetches the JWKS again, and the call waits for it.
        assert await round_trip(proxy.target, token=k2.token()) == b"v"
        assert server.fetches == 2
        assert proxy.recorder.identities[-1].subject == "alice"

        # Made-up kids do not turn the proxy into a load generator against the issuer.
        for i in range(5):
            with pytest.raises(prism.client.Unauthenticated):
                await round_trip(proxy.target, token=ec_signer(f"made-up-{i}").token())
        assert server.fetches == 2
        # Both keys keep working.
        assert await round_trip(proxy.target, token=k1.token()) == b"v"
        assert await round_trip(proxy.target, token=k2.token()) == b"v"
        assert server.fetches == 2


async def test_jwks_concurrent_unknown_kids_share_one_refetch(
    clock: trio.testing.MockClock,
) -> None:
    k1, k2 = ec_signer("k1"), ec_signer("k2")
    server = JwksServer(jwks(k1))
    async with proxy_with_jwks(server) as proxy:
        server.document = jwks(k1, k2)
        clock.jump(31)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(lambda: round_trip(proxy.target, token=k2.token()))
        assert server.fetches == 2
        assert len(proxy.recorder.identities) == 16  # a set and a get each


async def test_jwks_refreshed_in_the_background_after_max_age(
    clock: trio.testing.MockClock,
) -> None:
    k1, k2 = ec_signer("k1"), ec_signer("k2")
    server = JwksServer(jwks(k1), cache_control="public, max-age=120")
    async with proxy_with_jwks(server) as proxy:
        k1_token = k1.token()
        assert await round_trip(proxy.target, token=k1_token) == b"v"  # verified, remembered
        fetched = server.fetched
        server.document = jwks(k2)  # k1 retired, k2 in
        clock.jump(121)
        with trio.fail_after(30):
            await fetched.wait()
        assert server.fetches == 2
        # The refresh, not a re-fetch, brought k2: the call fetches nothing more.
        assert await round_trip(proxy.target, token=k2.token()) == b"v"
        assert server.fetches == 2
        # A retired key's tokens are refused once the set no longer has it, also one that
        # was verified (and remembered) before.
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=k1_token)


async def test_jwks_fetch_failure_at_start_still_serves_and_retries(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    k1 = ec_signer("k1")
    server = JwksServer(jwks(k1), status=503)
    async with proxy_with_jwks(server, jwks_refetch_interval=30) as proxy:
        assert server.fetches == 1
        assert "JWKS fetch from" in caplog.text
        assert "HTTP status 503" in caplog.text
        with pytest.raises(prism.client.Unauthenticated):
            await round_trip(proxy.target, token=k1.token())
        server.status = 200
        fetched = server.fetched
        clock.jump(31)  # the retry period after a failure
        with trio.fail_after(30):
            await fetched.wait()
        assert await round_trip(proxy.target, token=k1.token()) == b"v"
    assert "JWKS from http://127.0.0.1:" in caplog.text


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ({"raw": b"<html>oops</html>"}, "not JSON"),
        ({"raw": b'{"keys": "none"}'}, "not a JWKS document"),
        ({"document": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}}, "no usable"),
        ({"raw": b"x" * (1 << 20 | 1)}, "larger than 1048576 bytes"),
    ],
    ids=["html", "not_jwks", "only_hmac", "too_large"],
)
async def test_jwks_broken_refresh_keeps_the_keys_held(
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    broken: dict[str, Any],
    why: str,
) -> None:
    k1 = ec_signer("k1")
    server = JwksServer(jwks(k1))
    logged = trio.Event()
    handler = OnRecord(logged, "JWKS fetch from")
    logging.getLogger("prism.proxy.authn").addHandler(handler)
    try:
        async with proxy_with_jwks(server) as proxy:
            for name, value in broken.items():
                setattr(server, name, value)
            fetched = server.fetched
            clock.jump(3601)  # the max-age runs out
            with trio.fail_after(30):
                await fetched.wait()
            with trio.fail_after(30):
                await logged.wait()  # the proxy has read the answer
            assert why in caplog.text
            # The failed refresh is logged; the proxy keeps the key it had and keeps serving.
            assert "keeping the 1 keys held" in caplog.text
            assert await round_trip(proxy.target, token=k1.token()) == b"v"
    finally:
        logging.getLogger("prism.proxy.authn").removeHandler(handler)


async def test_jwks_unanswered_fetch_gives_up_after_jwks_fetch_timeout(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    asked = trio.Event()

    async def never_answer(stream: trio.SocketStream) -> None:
        asked.set()
        await trio.sleep_forever()

    async def time_passes() -> None:
        await asked.wait()
        clock.jump(11)  # past jwks_fetch_timeout (10 s)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(time_passes)
        jwt = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{port}/")
        # The proxy starts: a hung issuer delays it by jwks_fetch_timeout at most.
        async with running(config(auth=AuthConfig(jwt=jwt))) as proxy:
            assert "no answer within 10s" in caplog.text
            with pytest.raises(prism.client.Unauthenticated):
                await round_trip(proxy.target, token=ec_signer("k1").token())
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("trusted", [True, False])
async def test_jwks_url_over_https_is_verified_with_jwks_ca(
    clock: trio.testing.MockClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    trusted: bool,
) -> None:
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(context)
    k1 = ec_signer("k1")
    server = JwksServer(jwks(k1), ssl_context=context)
    # Not trusted: the system's roots, which know nothing of the test's CA.
    settings = {"jwks_ca": pki.ca_file} if trusted else {}
    async with proxy_with_jwks(server, **settings) as proxy:
        if trusted:
            assert server.fetches == 1
            assert await round_trip(proxy.target, token=k1.token()) == b"v"
        else:
            assert server.fetches == 0  # the handshake failed: nothing was asked
            assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
            with pytest.raises(prism.client.Unauthenticated):
                await round_trip(proxy.target, token=k1.token())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("max-age=300", 300.0),
        ("public, max-age=60, must-revalidate", 60.0),
        ('max-age="90"', 90.0),
        ("no-cache", 0.0),
        ("private, no-store", 0.0),
        ("public", None),
        (None, None),
        ("s-maxage=10", None),
    ],
)
def test_jwks_max_age_reads_cache_control(header: str | None, seconds: float | None) -> None:
    assert max_age(header) == seconds


def test_jwks_parse_skips_symmetric_and_encryption_keys() -> None:
    signer = ec_signer("sig")
    document = jwks(signer)
    document["keys"] += [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {**rsa_signer("enc").jwk(), "use": "enc"},
        {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AA", "y": "AA"},
        "not a key",
    ]
    assert [key.kid for key in parse_jwks(document)] == ["sig"]


async def refreshed(verifier: JwtVerifier, clock: trio.testing.MockClock) -> None:
    """Past the key set's max-age, until the background refresh has brought the new set (it
    logs "JWKS from ..." once the set is in place)."""
    generation = verifier.keys.generation
    logged = trio.Event()
    handler = OnRecord(logged, "JWKS from")
    logger = logging.getLogger("prism.proxy.authn")
    logger.addHandler(handler)
    try:
        clock.jump(121)
        with trio.fail_after(30):  # a hang guard only
            await logged.wait()
    finally:
        logger.removeHandler(handler)
    assert verifier.keys.generation == generation + 1


async def test_jwks_rotation_invalidates_remembered_tokens(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prism.proxy.authn")
    k1, k2 = ec_signer("k1"), ec_signer("k2")
    server = JwksServer(jwks(k1), cache_control="max-age=120")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=server.url))
        await nursery.start(verifier.keys.run)
        token = k1.token()
        remembered = await verifier.verify(token)
        assert await verifier.verify(token) is remembered
        assert len(verifier.verified) == 1
        server.document = jwks(k2)  # k1 revoked
        await refreshed(verifier, clock)
        with pytest.raises(AuthFailure) as refused:
            await verifier.verify(token)
        assert refused.value.reason == "unknown_kid"
        assert len(verifier.verified) == 0
        # Rotated back in, the token is verified again (not taken from before).
        server.document = jwks(k1, k2)
        await refreshed(verifier, clock)
        again = await verifier.verify(token)
        assert again is not remembered
        assert again.subject == "alice"
        nursery.cancel_scope.cancel()
