"""What the authentication tests share: a PKI (trustme, plus cryptography for SAN URIs), signing
keys and tokens made with PyJWT, a real proxy (``prism.proxy.app.Proxy``) with the identity its
authenticator established recorded, and a small JWKS server (h11 on Trio, over real TCP)."""

from __future__ import annotations

import datetime
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import jwt
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

import prism.client
from prism import grpc as pg
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig, TlsConfig
from prism.config.auth import AccessConfig, AuthConfig
from prism.proxy.app import Proxy
from prism.proxy.request import Identity, RequestInfo

ISSUER = "https://issuer.test"
AUDIENCE = "prism"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str, *identities: str, common_name: str | None = None) -> Path:
        """A client certificate+key file (PEM) signed by this PKI's CA: ``identities`` as trustme
        reads them (DNS names, IPs, e-mails), with the subject ``common_name``."""
        leaf = self.ca.issue_cert(*identities, common_name=common_name)
        path = self.dir / f"{name}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def client_custom(
        self, name: str, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (), cn: str
    ) -> Path:
        """A client certificate with SAN URIs (which trustme cannot make), or none at all."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        path = self.dir / f"{name}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        return path


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(
        directory, ca, directory / "ca.pem", directory / "server.pem", directory / "server.key"
    )
    ca.cert_pem.write_to_path(str(pki.ca_file))
    server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
    server.private_key_pem.write_to_path(str(pki.server_key))
    return pki


# -- keys and tokens ------------------------------------------------------------------------


@dataclass
class Signer:
    """A signing key, its ``kid`` and the algorithm its tokens use."""

    key: PrivateKey
    kid: str | None
    alg: str

    def token(self, *, headers: Mapping[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600}
        payload.update(claims)
        for name, value in list(payload.items()):
            if value is None:
                del payload[name]
        extra = dict(headers or {})
        if self.kid is not None:
            extra.setdefault("kid", self.kid)
        return jwt.encode(payload, self.key, algorithm=self.alg, headers=extra)

    def public_pem_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_pem(self, path: Path) -> Path:
        path.write_bytes(self.public_pem_bytes())
        return path

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.key.public_key()))
        if self.kid is not None:
            jwk["kid"] = self.kid
        jwk["alg"] = self.alg
        jwk["use"] = "sig"
        return jwk


def rsa_signer(kid: str | None = "rsa-1") -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid, "RS256")


def ec_signer(kid: str | None = "ec-1") -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), kid, "ES256")


def ed_signer(kid: str | None = "ed-1") -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), kid, "EdDSA")


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [signer.jwk() for signer in signers]}


# -- the proxy ------------------------------------------------------------------------------


def config(
    *, auth: AuthConfig | None = None, pki: Pki | None = None, anonymous: bool = False
) -> ProxyConfig:
    tls = None
    if pki is not None:
        tls = TlsConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_file)
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=AdminConfig(enabled=False, listen=None),
        tls=tls,
        auth=auth or AuthConfig(),
        namespaces=(
            NamespaceConfig(
                name="kv",
                plugin=PluginConfig(name="memstore"),
                access=AccessConfig(anonymous=anonymous),
            ),
        ),
    )


@dataclass
class Recorder:
    """Wraps the proxy's real authenticator and keeps what it said (identity or refusal)."""

    inner: Any
    identities: list[Identity] = field(default_factory=list)

    async def authenticate(self, call: pg.ServerCall, info: RequestInfo) -> Identity:
        identity: Identity = await self.inner.authenticate(call, info)
        self.identities.append(identity)
        return identity


@dataclass
class Running:
    proxy: Proxy
    recorder: Recorder
    target: str

    def failures(self, reason: str) -> float:
        value = self.proxy.metrics.registry.get_sample_value(
            "prism_auth_failures_total", {"reason": reason}
        )
        return value or 0.0


@asynccontextmanager
async def running(cfg: ProxyConfig) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(cfg).run)
        recorder = Recorder(proxy.pipeline.authenticator)
        proxy.pipeline.authenticator = recorder
        assert proxy.address is not None
        yield Running(proxy, recorder, f"127.0.0.1:{proxy.address[1]}")
        nursery.cancel_scope.cancel()


async def round_trip(target: str, **connect: Any) -> bytes:
    with trio.fail_after(30):
        async with prism.client.connect(target, **connect) as client:
            kv = client.keyvalue("kv")
            await kv.set("k", b"v")
            return (await kv.get("k")).value


# -- a JWKS server --------------------------------------------------------------------------


@dataclass
class JwksServer:
    """Serves ``document`` at ``/jwks.json`` over HTTP/1.1 (h11 on Trio); ``fetches`` counts
    the GETs answered, ``fetched`` is set at each one."""

    document: dict[str, Any]
    cache_control: str | None = "max-age=3600"
    status: int = 200
    fetches: int = 0
    port: int = 0
    fetched: trio.Event = field(default_factory=trio.Event)
    #: Served instead of ``document`` when set (a broken issuer).
    raw: bytes | None = None
    #: Serve HTTPS with this context (plain HTTP without one).
    ssl_context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}/jwks.json"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, tcp: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.ssl_context, server_side=True)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        return  # a client that gave up on the handshake

                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    await self._answer(conn, stream)
                    return
                if isinstance(event, h11.ConnectionClosed):
                    return

    async def _answer(self, conn: h11.Connection, stream: trio.abc.Stream) -> None:
        body = self.raw if self.raw is not None else json.dumps(self.document).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        headers.append(("connection", "close"))
        if self.cache_control is not None:
            headers.append(("cache-control", self.cache_control))
        self.fetches += 1
        event, self.fetched = self.fetched, trio.Event()
        try:
            await stream.send_all(conn.send(h11.Response(status_code=self.status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except trio.BrokenResourceError:
            pass  # the client stopped reading (a body over its limit)
        finally:
            event.set()
