"""One admin port for gRPC and HTTP/1.1, over a real proxy: prism's channel, grpcio, httpx and
raw sockets on the same address; over TCP, a Unix socket, TLS (ALPN h2 and http/1.1) and mTLS."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import grpc
import httpx
import pytest
import trio
import trustme

from prism import grpc as pg
from prism._proto.prism.admin.v1 import ListNamespacesRequest, ListNamespacesResponse
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig, TlsConfig
from prism.proxy.adminport import PREFACE, AdminPort
from prism.proxy.app import Proxy
from prism.proxy.http import HttpServer, Routes

LIST = "/prism.admin.v1.Admin/ListNamespaces"


def config(admin: AdminConfig) -> ProxyConfig:
    return ProxyConfig(
        listen="127.0.0.1:0",
        admin=admin,
        shutdown_grace=1.0,
        namespaces=(NamespaceConfig("kv", PluginConfig("memstore")),),
    )


@asynccontextmanager
async def running(admin: AdminConfig) -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config(admin)).run)
        yield proxy
        nursery.cancel_scope.cancel()


def admin_target(proxy: Proxy) -> str:
    assert proxy.admin_address is not None
    return "{}:{}".format(*proxy.admin_address)


async def names(channel: pg.Channel) -> list[str]:
    reply = await channel.unary_unary(LIST, ListNamespacesRequest(), ListNamespacesResponse)
    return [ns.name for ns in reply.namespaces]


async def test_adminport_serves_grpc_and_http_on_one_address() -> None:
    async with running(AdminConfig(listen="127.0.0.1:0")) as proxy:
        target = admin_target(proxy)
        async with pg.open_channel(target) as channel, httpx.AsyncClient() as client:
            assert await names(channel) == ["kv"]
            metrics = await client.get(f"http://{target}/metrics")
            assert metrics.status_code == 200
            assert "prism_requests_in_flight" in metrics.text
            healthz = await client.get(f"http://{target}/healthz")
            assert healthz.json() == {"namespaces": {"kv": "SERVING"}, "status": "SERVING"}
            # Interleaved on the same port, each on its own connection.
            assert await names(channel) == ["kv"]
            assert (await client.get(f"http://{target}/healthz")).status_code == 200


async def test_adminport_serves_grpcio() -> None:
    async with running(AdminConfig(listen="127.0.0.1:0")) as proxy:
        target = admin_target(proxy)

        def call() -> bytes:
            with grpc.insecure_channel(target) as channel:
                list_namespaces = channel.unary_unary(LIST)
                reply: bytes = list_namespaces(b"", timeout=10)
                return reply

        reply = ListNamespacesResponse.parse(await trio.to_thread.run_sync(call))
        assert [ns.name for ns in reply.namespaces] == ["kv"]


async def read_response(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    received = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(4096)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(4096)
    return head, body


async def test_adminport_raw_http_request_as_curl_sends_it_keeps_alive() -> None:
    async with running(AdminConfig(listen="127.0.0.1:0")) as proxy:
        assert proxy.admin_address is not None
        host, port = proxy.admin_address
        stream = await trio.open_tcp_stream(host, port)
        # What `curl http://127.0.0.1:50052/healthz` sends, twice on one connection.
        request = (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"
        )
        for _ in range(2):
            await stream.send_all(request)
            head, body = await read_response(stream)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b'"status":"SERVING"' in body
        await stream.aclose()


async def test_adminport_garbage_and_silence_do_not_end_it() -> None:
    async with running(AdminConfig(listen="127.0.0.1:0")) as proxy:
        assert proxy.admin_address is not None
        host, port = proxy.admin_address
        for garbage in (b"\x00\xff" * 20 + b"\r\n\r\n", PREFACE[:10], PREFACE + b"\x00" * 9):
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(garbage)
            await stream.send_eof()
            with trio.fail_after(10):
                while await stream.receive_some(4096):
                    pass
            await stream.aclose()
        async with pg.open_channel(admin_target(proxy)) as channel:
            assert await names(channel) == ["kv"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="prism-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_adminport_on_a_unix_socket_serves_both(short_dir: Path) -> None:
    socket = short_dir / "admin.sock"
    async with running(AdminConfig(listen=None, unix_socket=socket)) as proxy:
        assert proxy.admin_socket == str(socket)
        async with pg.open_channel(f"unix:{socket}") as channel:
            assert await names(channel) == ["kv"]
        transport = httpx.AsyncHTTPTransport(uds=str(socket))
        async with httpx.AsyncClient(transport=transport) as client:
            reply = await client.get("http://admin/healthz")
            assert reply.json()["status"] == "SERVING"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("adminpki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("operator.example", common_name="operator")
    paths = {name: d / f"{name}.pem" for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


async def test_adminport_over_tls_negotiates_each_protocol_by_alpn(pki: dict[str, Path]) -> None:
    tls = TlsConfig(cert=pki["cert"], key=pki["key"])
    async with running(AdminConfig(listen="127.0.0.1:0", tls=tls)) as proxy:
        target = admin_target(proxy)
        async with pg.open_channel(
            target, ssl_context=pg.client_ssl_context(pki["ca"]), server_hostname="localhost"
        ) as channel:
            assert await names(channel) == ["kv"]
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        async with httpx.AsyncClient(verify=context) as client:
            reply = await client.get(f"https://{target}/healthz")
            assert (reply.status_code, reply.http_version) == (200, "HTTP/1.1")
        # Plain HTTP to the TLS port is refused, and the port keeps serving.
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://{target}/healthz")
        async with httpx.AsyncClient(verify=context) as client:
            assert (await client.get(f"https://{target}/metrics")).status_code == 200


async def test_adminport_mtls_requires_a_client_certificate(pki: dict[str, Path]) -> None:
    tls = TlsConfig(cert=pki["cert"], key=pki["key"], client_ca=pki["ca"])
    async with running(AdminConfig(listen="127.0.0.1:0", tls=tls)) as proxy:
        target = admin_target(proxy)
        anonymous = ssl.create_default_context(cafile=str(pki["ca"]))
        async with httpx.AsyncClient(verify=anonymous) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"https://{target}/healthz")
        with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
        with_cert.load_cert_chain(pki["client"])
        async with httpx.AsyncClient(verify=with_cert) as client:
            assert (await client.get(f"https://{target}/healthz")).status_code == 200
        context = pg.client_ssl_context(pki["ca"], pki["client"], pki["client"])
        async with pg.open_channel(target, ssl_context=context, server_hostname="localhost") as ch:
            assert await names(ch) == ["kv"]


async def test_adminport_drops_a_connection_that_sends_nothing() -> None:
    grpc_server = pg.Server([])
    http = HttpServer(Routes())
    port = AdminPort(grpc_server, http, handshake_timeout=0.2)
    async with trio.open_nursery() as nursery:
        host, number = await nursery.start(partial(port.serve_tcp, "127.0.0.1", 0))
        stream = await trio.open_tcp_stream(host, number)
        with trio.fail_after(10):
            assert await stream.receive_some(4096) == b""  # closed, without a word
        assert port.open_connections == 0
        await port.shutdown(1)


async def test_adminport_tls_covers_tcp_while_the_unix_socket_stays_plaintext(
    pki: dict[str, Path], short_dir: Path
) -> None:
    socket = short_dir / "admin.sock"
    tls = TlsConfig(cert=pki["cert"], key=pki["key"])
    async with running(AdminConfig(listen="127.0.0.1:0", unix_socket=socket, tls=tls)) as proxy:
        async with pg.open_channel(f"unix:{socket}") as channel:  # what `prism plugin` uses
            assert await names(channel) == ["kv"]
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://{admin_target(proxy)}/healthz")
