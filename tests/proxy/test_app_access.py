"""Identity end to end through a running proxy (``prism.proxy.app.Proxy``) over real sockets: a
JWT made with PyJWT (verified against a JWKS served over HTTP) and a client certificate from
trustme each carry their identity through authentication, ``access.rules`` and the audit log.
No token reaches a log line or an audit record."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from authn_testkit import AUDIENCE, ISSUER, JwksServer, Pki, ec_signer, jwks, make_pki

import prism.client
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig, TlsConfig
from prism.config.audit import AuditConfig
from prism.config.auth import AuthConfig, JwtConfig, MtlsConfig
from prism.proxy.app import Proxy
from prism.proxy.authn import GENERIC

SPIFFE = "spiffe://example.org/ns/prod/sa/orders"
#: orders: alice (by token) and the SPIFFE workloads (by certificate) may get and set, nothing
#: else; billing: only bob.
RULES = {
    "orders": [
        {"subject": "alice", "operations": ["get", "set"]},
        {"sans": ["URI:spiffe://example.org/*"], "operations": ["get", "set"]},
    ],
    "billing": [{"subject": "bob", "operations": ["*"]}],
}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@asynccontextmanager
async def access_proxy(
    tmp_path: Path, pki: Pki, jwks_url: str, *, mtls: MtlsConfig | None = None, **open_ns: bool
) -> AsyncIterator[tuple[str, Path]]:
    """A proxy over TLS with client certificates (verified against ``pki``'s CA), bearer JWTs
    from ``jwks_url`` and :data:`RULES`, plus a namespace admitting anonymous callers for each
    ``open_ns`` name; yields its address and its audit file."""
    audit = tmp_path / "audit.jsonl"
    config = ProxyConfig(
        listen="127.0.0.1:0",
        admin=AdminConfig(enabled=False, listen=None),
        tls=TlsConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_file),
        auth=AuthConfig(
            mtls=mtls or MtlsConfig(),
            jwt=JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url),
        ),
        audit=AuditConfig(enabled=True, file=audit),
        shutdown_grace=2.0,
        namespaces=(
            *(
                NamespaceConfig(name, PluginConfig("memstore"), access={"rules": rules})
                for name, rules in RULES.items()
            ),
            *(
                NamespaceConfig(name, PluginConfig("memstore"), access={"anonymous": True})
                for name in open_ns
            ),
        ),
    )
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config).run)
        assert proxy.address is not None
        yield f"127.0.0.1:{proxy.address[1]}", audit
        nursery.cancel_scope.cancel()


def records(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.read_text().splitlines()]


async def calls(target: str, **credentials: Any) -> None:
    """The allowed calls succeed; another operation, another namespace are refused."""
    with trio.fail_after(30):
        async with prism.client.connect(target, **credentials) as client:
            orders = client.keyvalue("orders")
            await orders.set("k", b"v")
            assert (await orders.get("k")).value == b"v"
            with pytest.raises(prism.client.PermissionDenied) as denied:
                await orders.delete("k")
            assert denied.value.message == "caller may not call 'delete' on namespace 'orders'"
            with pytest.raises(prism.client.PermissionDenied) as other:
                await client.keyvalue("billing").get("k")
            assert other.value.message == "caller may not call 'get' on namespace 'billing'"


async def test_app_access_jwt_and_certificate_identities_through_rules_and_audit(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signer = ec_signer()
    token = signer.token(sub="alice")
    stranger = signer.token(sub="mallory")
    server = JwksServer(jwks(signer))
    workload = pki.client_custom("workload", uris=(SPIFFE,), cn="orders")
    # Connections need a certificate (tls.client_ca): the token callers
    # present one whose name no rule knows, so only the token can admit them.
    anybody = pki.client("anybody", "anybody.internal")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with access_proxy(tmp_path, pki, server.url) as (target, audit):
            await calls(target, ca=pki.ca_file, token=token, cert=anybody)
            await calls(target, ca=pki.ca_file, cert=workload)
            with trio.fail_after(30):
                async with prism.client.connect(
                    target, ca=pki.ca_file, cert=anybody, token=stranger
                ) as client:
                    with pytest.raises(prism.client.PermissionDenied):
                        await client.keyvalue("orders").get("k")
                async with prism.client.connect(
                    target, ca=pki.ca_file, cert=anybody, token=token + "x"
                ) as client:
                    with pytest.raises(prism.client.Unauthenticated) as refused:
                        await client.keyvalue("orders").get("k")
                    assert refused.value.message == GENERIC
                with pytest.raises(prism.client.Unavailable):  # no certificate: refused at TLS
                    async with prism.client.connect(target, ca=pki.ca_file) as client:
                        await client.keyvalue("orders").get("k")
        nursery.cancel_scope.cancel()
    seen = [
        (r["subject"], r["source"], r["namespace"], r["operation"], r["status"])
        for r in records(audit)
    ]
    per_caller = [
        ("orders", "set", "OK"),
        ("orders", "get", "OK"),
        ("orders", "delete", "PERMISSION_DENIED"),
        ("billing", "get", "PERMISSION_DENIED"),
    ]
    assert seen == [
        *[("alice", "jwt", *call) for call in per_caller],
        *[(SPIFFE, "mtls", *call) for call in per_caller],
        ("mallory", "jwt", "orders", "get", "PERMISSION_DENIED"),
        # Refused before the front door read the request: who and what are unknown.
        (None, None, "", "", "UNAUTHENTICATED"),
    ]
    for secret in (token, stranger, token.split(".")[2]):
        assert secret not in caplog.text
        assert secret not in audit.read_text()


async def test_app_access_optional_certificate_lets_token_and_anonymous_callers_connect(
    tmp_path: Path, pki: Pki
) -> None:
    signer = ec_signer()
    server = JwksServer(jwks(signer))
    workload = pki.client_custom("workload", uris=(SPIFFE,), cn="orders")
    (tmp_path / "other").mkdir()
    stranger = make_pki(tmp_path / "other").client("stranger", "stranger.internal")
    optional = MtlsConfig(required=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with access_proxy(tmp_path, pki, server.url, mtls=optional, public=True) as (
            target,
            audit,
        ):
            # Without a certificate: the token is the identity...
            await calls(target, ca=pki.ca_file, token=signer.token(sub="alice"))
            # ... a certificate still is one when sent ...
            await calls(target, ca=pki.ca_file, cert=workload)
            with trio.fail_after(30):
                async with prism.client.connect(target, ca=pki.ca_file) as client:
                    # ... and with neither, the caller is anonymous: only "public" admits it.
                    await client.keyvalue("public").set("k", b"v")
                    with pytest.raises(prism.client.PermissionDenied) as denied:
                        await client.keyvalue("orders").get("k")
                    assert denied.value.message == "caller may not call 'get' on namespace 'orders'"
                # A certificate from another CA is still refused in the handshake.
                with pytest.raises(prism.client.Unavailable):
                    async with prism.client.connect(
                        target, ca=pki.ca_file, cert=stranger
                    ) as client:
                        await client.keyvalue("public").get("k")
        nursery.cancel_scope.cancel()
    subjects = [(r["subject"], r["namespace"], r["status"]) for r in records(audit)]
    assert subjects[:2] == [("alice", "orders", "OK")] * 2
    assert subjects[4:6] == [(SPIFFE, "orders", "OK")] * 2
    assert subjects[8:] == [
        ("anonymous", "public", "OK"),
        ("anonymous", "orders", "PERMISSION_DENIED"),
    ]


async def test_app_access_optional_certificate_without_anonymous_namespaces_is_unauthenticated(
    tmp_path: Path, pki: Pki
) -> None:
    server = JwksServer(jwks(ec_signer()))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        optional = MtlsConfig(required=False)
        async with access_proxy(tmp_path, pki, server.url, mtls=optional) as (target, _):
            with trio.fail_after(30):
                async with prism.client.connect(target, ca=pki.ca_file) as client:
                    with pytest.raises(prism.client.Unauthenticated) as refused:
                        await client.keyvalue("orders").get("k")
            assert refused.value.message == GENERIC
        nursery.cancel_scope.cancel()
