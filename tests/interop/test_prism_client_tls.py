"""prism's client over TLS (prism.grpc.tls) against grpcio's server (BoringSSL): what a proxy
does with a remote plugin, against a TLS stack nobody here wrote."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trustme
from interop_service import LIMIT, peer_server

from prism import grpc as pg


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("interop-pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("proxy.example", common_name="proxy")
    paths = {n: d / f"{n}.pem" for n in ("ca", "stranger", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    stranger.cert_pem.write_to_path(str(paths["stranger"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["ccert"]))
    client.private_key_pem.write_to_path(str(paths["ckey"]))
    return paths


@pytest.fixture(scope="module")
def mtls_peer(pki: dict[str, Path]) -> Iterator[str]:
    tls = [str(pki["cert"]), str(pki["key"]), str(pki["ca"])]
    with peer_server("grpcio_server", "--tls", *tls) as target:
        yield target


def _channel(
    pki: dict[str, Path], target: str, ca: str = "ca", client: bool = True
) -> AbstractAsyncContextManager[pg.Channel]:
    context = pg.client_ssl_context(pki[ca], *((pki["ccert"], pki["ckey"]) if client else ()))
    options = pg.ChannelOptions(max_receive_message_size=LIMIT)
    return pg.open_channel(
        target, ssl_context=context, server_hostname="localhost", options=options
    )


async def test_prism_client_tls_calls_of_every_shape(pki: dict[str, Path], mtls_peer: str) -> None:
    async with _channel(pki, mtls_peer) as channel:
        for i in range(50):  # sequential calls: each written by the caller itself
            assert await channel.unary_unary("/interop.Echo/Unary", b"%d" % i, bytes) == b"%d" % i
        replies = [
            r async for r in channel.unary_stream("/interop.Echo/ServerStream", b"500", bytes)
        ]
        assert replies == [b"%d" % i for i in range(500)]
        parts = [os.urandom(1000) for _ in range(200)]
        assert await channel.stream_unary("/interop.Echo/ClientStream", parts, bytes) == b"".join(
            parts
        )
        upper = [r async for r in channel.stream_stream("/interop.Echo/Bidi", [b"a", b"b"], bytes)]
        assert upper == [b"A", b"B"]
        with pytest.raises(pg.NotFound, match="gone"):
            await channel.unary_unary("/interop.Echo/Fail", b"5|gone", bytes)


async def test_prism_client_tls_large_messages_both_ways(
    pki: dict[str, Path], mtls_peer: str
) -> None:
    payload = os.urandom(10 << 20)
    async with _channel(pki, mtls_peer) as channel:
        assert await channel.unary_unary("/interop.Echo/Unary", payload, bytes) == payload


async def test_prism_client_tls_concurrent_calls_share_the_connection(
    pki: dict[str, Path], mtls_peer: str
) -> None:
    async with _channel(pki, mtls_peer) as channel:
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            results[i] = await channel.unary_unary("/interop.Echo/Unary", b"x" * i, bytes)

        async with trio.open_nursery() as nursery:
            for i in range(64):
                nursery.start_soon(one, i)
        assert results == {i: b"x" * i for i in range(64)}


async def test_prism_client_tls_untrusted_server_says_unknown_ca(
    pki: dict[str, Path], mtls_peer: str
) -> None:
    async with _channel(pki, mtls_peer, ca="stranger") as channel:
        with pytest.raises(pg.Unavailable, match="certificate verify failed: unknown CA"):
            await channel.unary_unary("/interop.Echo/Unary", b"x", bytes)


async def test_prism_client_tls_without_client_certificate_is_refused(
    pki: dict[str, Path], mtls_peer: str
) -> None:
    async with _channel(pki, mtls_peer, client=False) as channel:
        with pytest.raises(pg.Unavailable), trio.fail_after(10):
            await channel.unary_unary("/interop.Echo/Unary", b"x", bytes)
