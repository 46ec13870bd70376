"""Who may use the admin port, over real sockets: token, client certificate, Unix socket,
anonymous reads, for gRPC (prism's channel, grpcio) and HTTP (httpx) alike."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
import trio
import trustme

from prism import grpc as pg
from prism._proto.prism.admin.v1 import (
    ListNamespacesRequest,
    ListNamespacesResponse,
    ReloadNamespaceRequest,
    ReloadNamespaceResponse,
)
from prism.cli import admin as cli
from prism.config import (
    AdminConfig,
    ConfigError,
    NamespaceConfig,
    PluginConfig,
    ProxyConfig,
    SecretsConfig,
    TlsConfig,
)
from prism.config.auth import AccessConfig
from prism.proxy.app import Proxy

ADMIN = "/prism.admin.v1.Admin/"
TOKEN = "tok-7d1e-admin-secret"
AUTH = [("authorization", f"Bearer {TOKEN}")]


def config(admin: AdminConfig, secrets: SecretsConfig | None = None) -> ProxyConfig:
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=admin,
        shutdown_grace=1.0,
        secrets=secrets or SecretsConfig(),
        namespaces=(
            NamespaceConfig("kv", PluginConfig("memstore"), access=AccessConfig(anonymous=True)),
        ),
    )


@asynccontextmanager
async def running(cfg: ProxyConfig) -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(cfg).run)
        yield proxy
        nursery.cancel_scope.cancel()


def target(proxy: Proxy) -> str:
    assert proxy.admin_address is not None
    return "{}:{}".format(*proxy.admin_address)


async def list_names(channel: pg.Channel, metadata: list[tuple[str, str | bytes]]) -> list[str]:
    reply = await channel.unary_unary(
        ADMIN + "ListNamespaces", ListNamespacesRequest(), ListNamespacesResponse, metadata=metadata
    )
    return [ns.name for ns in reply.namespaces]


async def reload(channel: pg.Channel, metadata: list[tuple[str, str | bytes]]) -> int:
    reply = await channel.unary_unary(
        ADMIN + "ReloadNamespace",
        ReloadNamespaceRequest(namespace="kv"),
        ReloadNamespaceResponse,
        metadata=metadata,
    )
    return reply.generation


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="prism-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_adminauth_tcp_caller_without_token_is_refused_everything_but_healthz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        running(config(AdminConfig(listen="127.0.0.1:0", token=TOKEN))) as proxy,
        pg.open_channel(target(proxy)) as channel,
        httpx.AsyncClient(base_url=f"http://{target(proxy)}") as http,
    ):
        generation = proxy.host.route("kv").current.generation  # type: ignore[union-attr]
        with pytest.raises(pg.Unauthenticated, match="needs credentials"):
            await list_names(channel, [])
        with pytest.raises(pg.Unauthenticated):
            await reload(channel, [])
        for method, path, body in (
            ("GET", "/admin/plugin/list", None),
            ("GET", "/metrics", None),
            ("POST", "/admin/plugin/reload", {"namespace": "kv"}),
            ("POST", "/admin/plugin/disable", {"namespace": "kv"}),
            ("POST", "/admin/config/reload", {}),
        ):
            reply = await http.request(method, path, json=body)
            assert reply.status_code == 401, (path, reply.text)
            assert reply.headers["www-authenticate"].startswith("Bearer")
            assert "needs credentials" in reply.json()["error"]
        assert (await http.get("/healthz")).status_code == 200
        # Nothing happened to the namespace.
        current = proxy.host.route("kv").current
        assert current is not None
        assert current.generation == generation
        assert proxy.host.route("kv").disabled is None
        # With the token, both protocols work.
        assert await list_names(channel, AUTH) == ["kv"]
        assert await reload(channel, AUTH) > generation
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/metrics", headers=headers)).status_code == 200
        reply = await http.post("/admin/plugin/reload", json={"namespace": "kv"}, headers=headers)
        assert reply.status_code == 200, reply.text
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "prism.audit"]
    refused = {(r["action"], r["caller"], r["status"]) for r in records if r["status"] != "OK"}
    assert refused == {
        (action, "anonymous", "UNAUTHENTICATED")
        for action in (
            "ListNamespaces",
            "ReloadNamespace",
            "list",
            "metrics",
            "reload",
            "disable",
            "config-reload",
        )
    }
    reloads = [r for r in records if r["action"] == "reload" and r["status"] == "OK"]
    assert [(r["caller"], r["status"], r["target"]) for r in reloads] == [
        ("token", "OK", "kv"),
        ("token", "OK", "kv"),
    ]
    assert TOKEN not in caplog.text


async def test_adminauth_wrong_token_is_refused_even_for_reads_and_never_echoed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "guessed-token-value-123"
    admin = AdminConfig(listen="127.0.0.1:0", token=TOKEN, anonymous_read=True)
    async with (
        running(config(admin)) as proxy,
        pg.open_channel(target(proxy)) as channel,
        httpx.AsyncClient(base_url=f"http://{target(proxy)}") as http,
    ):
        with pytest.raises(pg.Unauthenticated, match="not valid") as raised:
            await list_names(channel, [("authorization", f"Bearer {wrong}")])
        assert wrong not in str(raised.value)
        for header in (f"Bearer {wrong}", f"Basic {TOKEN}", "Bearer"):
            reply = await http.get("/admin/plugin/list", headers={"authorization": header})
            assert reply.status_code == 401
            assert wrong not in reply.text
            assert TOKEN not in reply.text
    assert wrong not in caplog.text
    assert TOKEN not in caplog.text


async def test_adminauth_anonymous_read_opens_reads_but_not_changes() -> None:
    admin = AdminConfig(listen="127.0.0.1:0", anonymous_read=True)
    async with (
        running(config(admin)) as proxy,
        pg.open_channel(target(proxy)) as channel,
        httpx.AsyncClient(base_url=f"http://{target(proxy)}") as http,
    ):
        assert await list_names(channel, []) == ["kv"]
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/admin/plugin/status?namespace=kv")).json()["name"] == "kv"
        with pytest.raises(pg.Unauthenticated):
            await reload(channel, [])
        reply = await http.post("/admin/plugin/disable", json={"namespace": "kv"})
        assert reply.status_code == 401
        assert proxy.host.route("kv").disabled is None


async def test_adminauth_unix_socket_needs_no_token(short_dir: Path) -> None:
    socket = short_dir / "admin.sock"
    admin = AdminConfig(listen="127.0.0.1:0", unix_socket=socket, token=TOKEN)
    async with running(config(admin)) as proxy, pg.open_channel(f"unix:{socket}") as channel:
        assert await list_names(channel, []) == ["kv"]
        assert await reload(channel, []) > 0
        # The TCP listener of the same proxy still wants the token.
        async with pg.open_channel(target(proxy)) as tcp:
            with pytest.raises(pg.Unauthenticated):
                await list_names(tcp, [])
        transport = httpx.AsyncHTTPTransport(uds=str(socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            reply = await http.post("/admin/plugin/reload", json={"namespace": "kv"})
            assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("adminauthpki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("operator.example", common_name="operator")
    stranger = other.issue_cert("stranger.example", common_name="stranger")
    paths = {n: d / f"{n}.pem" for n in ("ca", "cert", "key", "client", "stranger")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(paths["stranger"]))
    return paths


async def test_adminauth_client_certificate_authenticates_over_mtls(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tls = TlsConfig(cert=pki["cert"], key=pki["key"], client_ca=pki["ca"])
    async with running(config(AdminConfig(listen="127.0.0.1:0", tls=tls))) as proxy:
        address = target(proxy)
        context = pg.client_ssl_context(pki["ca"], pki["client"])
        async with pg.open_channel(address, ssl_context=context) as channel:
            assert await reload(channel, []) > 0

        # grpcio with the same certificate, no token.
        def with_grpcio() -> bytes:
            credentials = grpc.ssl_channel_credentials(
                pki["ca"].read_bytes(),
                pki["client"].read_bytes(),
                pki["client"].read_bytes(),
            )
            with grpc.secure_channel(address, credentials) as ch:
                reply: bytes = ch.unary_unary(ADMIN + "ListNamespaces")(b"", timeout=10)
                return reply

        listed = ListNamespacesResponse.parse(await trio.to_thread.run_sync(with_grpcio))
        assert [ns.name for ns in listed.namespaces] == ["kv"]
        # A certificate from another CA never gets as far as a call.
        stranger = pg.client_ssl_context(pki["ca"], pki["stranger"])
        async with pg.open_channel(address, ssl_context=stranger) as channel:
            with pytest.raises(pg.Unavailable):
                await list_names(channel, [])
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "prism.audit"]
    assert [r["caller"] for r in audit if r["action"] == "reload"] == ["cert:operator"]


async def test_adminauth_cli_speaks_tls_with_cacert_and_token(pki: dict[str, Path]) -> None:
    tls = TlsConfig(cert=pki["cert"], key=pki["key"])
    admin = AdminConfig(listen="127.0.0.1:0", tls=tls, token=TOKEN)
    async with running(config(admin)) as proxy:
        token_file = pki["ca"].parent / "token"
        token_file.write_text(TOKEN + "\n")
        conn = cli.Admin.from_options(target(proxy), token_file, pki["ca"])
        listed = json.loads(await cli.list_namespaces(conn, as_json=True))
        assert [ns["name"] for ns in listed["namespaces"]] == ["kv"]
        without = cli.Admin.from_options(target(proxy), None, pki["ca"])
        if os.environ.get(cli.TOKEN_ENV):
            without = cli.Admin(without.target, None, without.ssl_context)
        with pytest.raises(cli.CliError, match="not authenticated: give --token-file"):
            await cli.list_namespaces(without, as_json=True)


def test_adminauth_token_from_a_missing_secret_fails_at_start_naming_it(tmp_path: Path) -> None:
    admin = AdminConfig(listen="127.0.0.1:0", token="{{ secret:admin-token }}")
    secrets = SecretsConfig(directory=tmp_path, env_prefix=None)
    with pytest.raises(ConfigError, match=r"admin\.token: secret 'admin-token' not found"):
        Proxy(config(admin, secrets))
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    proxy = Proxy(config(admin, secrets))
    assert proxy.admin_auth is not None
    assert proxy.admin_auth.token == TOKEN


def test_adminauth_token_that_is_not_a_valid_reference_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^token: \{\{ secret:\.\.\. \}\} needs a secret name"):
        AdminConfig(token="{{ secret: }}")
    with pytest.raises(ConfigError, match=r"^token: an empty token"):
        AdminConfig(token="   ")
