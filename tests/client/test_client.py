"""``prism.client.connect`` and ``Client``: generic calls through a real proxy, the statuses
callers see, deadlines, TLS and mTLS with real certificates, and the metadata every call sends
(seen by a real prism.grpc server)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from client_testkit import config, serving

import prism
import prism.client as pc
from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest, SetResponse
from prism._proto.prism.proxy.v1 import ExecuteResponse
from prism.config import TlsConfig


async def test_client_execute_typed_params_and_result(client: pc.Client) -> None:
    written = await client.execute("kv", "set", SetRequest(key="k", value=b"v"), SetResponse)
    assert isinstance(written, SetResponse)
    read = await client.execute("kv", "get", GetRequest(key="k"), GetResponse)
    assert (read.found, read.value, read.etag) == (True, b"v", written.etag)


async def test_client_execute_raw_params_and_request_metadata(client: pc.Client) -> None:
    reply = await client.execute(
        "probe", "echo", b"\x00raw", bytes, request_metadata={"user": "ada", "trace": "t-1"}
    )
    assert reply == b"\x00raw|[('trace', 't-1'), ('user', 'ada')]"
    assert await client.execute("probe", "echo", None, bytes) == b"|[]"


async def test_client_execute_raw_result_through_memstore(client: pc.Client) -> None:
    await client.execute("kv", "set_raw", b"\x01\x02", bytes, request_metadata={"key": "blob"})
    assert await client.execute("kv", "get_raw", b"", bytes, request_metadata={"key": "blob"}) == (
        b"\x01\x02"
    )
    with pytest.raises(pc.NotFound, match="no key 'other'"):
        await client.execute("kv", "get_raw", b"", bytes, request_metadata={"key": "other"})


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("ABORTED", pc.Aborted),
        ("NOT_FOUND", pc.NotFound),
        ("ALREADY_EXISTS", pc.AlreadyExists),
        ("FAILED_PRECONDITION", pc.FailedPrecondition),
        ("PERMISSION_DENIED", pc.PermissionDenied),
        ("RESOURCE_EXHAUSTED", pc.ResourceExhausted),
        ("UNAVAILABLE", pc.Unavailable),
    ],
)
async def test_client_plugin_status_reaches_the_caller(
    client: pc.Client, status: str, error: type[pc.GrpcError]
) -> None:
    with pytest.raises(error) as info:
        await client.execute("probe", "fail", status.encode(), bytes)
    assert info.value.status is pc.Status[status]
    assert info.value.message == f"failed as asked: {status}"


async def test_client_unknown_namespace_and_operation(client: pc.Client) -> None:
    with pytest.raises(pc.NotFound):
        await client.execute("nowhere", "get", GetRequest(key="k"), GetResponse)
    with pytest.raises(pc.Unimplemented):
        await client.execute("kv", "frobnicate", b"", bytes)
    with pytest.raises(pc.InvalidArgument):
        await client.execute("kv", "get", SetRequest(key="k"), GetResponse)  # wrong params type


async def test_client_result_of_another_type_is_internal(client: pc.Client) -> None:
    with pytest.raises(pc.Internal, match=r"prism\.data\.v1\.GetResponse, got .*SetResponse"):
        await client.execute("kv", "set", SetRequest(key="k", value=b"v"), GetResponse)
    with pytest.raises(pc.Internal, match="raw"):
        await client.execute("probe", "echo", b"", GetResponse)
    with pytest.raises(pc.Internal, match="typed"):
        await client.execute("kv", "get", GetRequest(key="k"), bytes)


async def events(client: pc.Client) -> list[str]:
    return (await client.execute("probe", "events", b"", bytes)).decode().split("\n")


async def test_client_cancel_scope_cancels_the_call_at_the_plugin(
    memory_client: pc.Client, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.move_on_after(5) as scope:
        await memory_client.execute("probe", "slow", b"3600", bytes)
    assert scope.cancelled_caught
    with trio.fail_after(60):
        while "slow cancelled" not in await events(memory_client):  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_client_with_timeout_raises_deadline_exceeded(
    memory_client: pc.Client, autojump_clock: trio.testing.MockClock
) -> None:
    bounded = memory_client.with_timeout(2)
    assert await bounded.execute("probe", "slow", b"1", bytes) == b"done"
    with pytest.raises(pc.DeadlineExceeded):
        await bounded.execute("probe", "slow", b"3600", bytes)
    with trio.fail_after(60):
        while "slow cancelled" not in await events(memory_client):  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_client_with_timeout_must_be_positive(memory_client: pc.Client) -> None:
    assert memory_client.with_timeout(None).timeout is None
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            memory_client.with_timeout(bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_client_nobody_listening_is_unavailable() -> None:
    async with pc.connect(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(pc.Unavailable, match="cannot connect"):
            await client.keyvalue("kv").get("k")


async def test_client_compressed_requests(proxy: prism.RunningProxy) -> None:
    async with pc.connect(proxy.address, compression="gzip") as client:
        kv = client.keyvalue("kv")
        value = b"the same words again and again " * 4096
        await kv.set("big", value)
        assert (await kv.get("big")).value == value


# -- TLS --------------------------------------------------------------------------------------


class Pki:
    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.ca = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        self.server = directory / "server.pem"
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(self.server)
        )
        self.client = directory / "client.pem"
        ca.issue_cert("app.example").private_key_and_cert_chain_pem.write_to_path(str(self.client))
        other = trustme.CA()
        self.other_ca = directory / "other-ca.pem"
        other.cert_pem.write_to_path(str(self.other_ca))
        self.stranger = directory / "stranger.pem"
        other.issue_cert("app.example").private_key_and_cert_chain_pem.write_to_path(
            str(self.stranger)
        )


@asynccontextmanager
async def tls_proxy(pki: Pki, *, mtls: bool) -> AsyncIterator[str]:
    tls = TlsConfig(cert=pki.server, key=pki.server, client_ca=pki.ca if mtls else None)
    async with serving(config(None, tls=tls)) as running:
        yield running.address


async def set_and_get(client: pc.Client) -> bytes:
    kv = client.keyvalue("kv")
    await kv.set("k", b"over tls")
    return (await kv.get("k")).value


async def test_client_tls_verifies_the_proxy(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    async with tls_proxy(pki, mtls=False) as address:
        async with pc.connect(address, ca=pki.ca) as client:
            assert await set_and_get(client) == b"over tls"
        async with pc.connect(address, ca=pki.other_ca) as client:
            with pytest.raises(pc.Unavailable, match="unknown CA"):
                await set_and_get(client)
        async with pc.connect(address) as client:  # plaintext to a TLS port
            with pytest.raises(pc.Unavailable):
                await set_and_get(client)


async def test_client_mtls_presents_a_client_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    async with tls_proxy(pki, mtls=True) as address:
        async with pc.connect(address, ca=pki.ca, cert=pki.client) as client:
            assert await set_and_get(client) == b"over tls"
        for cert in (None, pki.stranger):  # none, or one from a CA the proxy does not trust
            async with pc.connect(address, ca=pki.ca, cert=cert) as client:
                with pytest.raises(pc.Unavailable):
                    await set_and_get(client)


async def test_client_key_without_cert_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="certificate"):
        async with pc.connect("127.0.0.1:1", key=tmp_path / "key.pem"):
            pass


# -- metadata, as a server sees it -------------------------------------------------------------


class MetadataEcho(pg.Service):
    """A DataProxy whose Execute answers with the call's metadata (as a raw result)."""

    name = "prism.proxy.v1.DataProxy"

    @pg.unary_unary("Execute", bytes, ExecuteResponse)
    async def execute(self, request: bytes, call: pg.ServerCall) -> ExecuteResponse:
        seen = [(k, v) for k, v in call.metadata if k in ("authorization", "x-app", "x-call")]
        return ExecuteResponse(raw_result=repr(seen).encode())


@asynccontextmanager
async def metadata_server() -> AsyncIterator[str]:
    server = pg.Server([MetadataEcho()])
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        yield f"{host}:{port}"
        nursery.cancel_scope.cancel()


async def test_client_token_and_default_metadata_on_every_call() -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"
    async with (
        metadata_server() as address,
        pc.connect(address, token=token, metadata=[("x-app", "billing")]) as client,
    ):
        expected = [("x-app", "billing"), ("authorization", f"Bearer {token}")]
        assert await client.execute("any", "op", b"", bytes) == repr(expected).encode()
        extra = await client.execute("any", "op", b"", bytes, metadata=[("x-call", "1")])
        assert extra == repr([*expected, ("x-call", "1")]).encode()
        view = client.with_timeout(10)
        assert await view.execute("any", "op", b"", bytes) == repr(expected).encode()
        assert token not in repr(client)
        assert token not in repr(view)
        assert "authorization=<withheld>" in repr(client)


@pytest.mark.parametrize(
    ("token", "metadata", "match"),
    [
        ("line\nbreak-secret", (), "token"),
        (" padded-secret", (), "token"),
        ("", (), "token"),
        ("fine", [("authorization", "Bearer other")], "authorization"),
        (None, [("X-Upper", "v")], "metadata key"),
        (None, [("x-bytes", b"v")], "metadata value"),
        (None, [("grpc-timeout", "1S")], "reserved"),
    ],
)
async def test_client_bad_token_or_metadata_is_value_error(
    token: str | None, metadata: list[tuple[str, str | bytes]], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        async with pc.connect("127.0.0.1:1", token=token, metadata=metadata):
            pass
    assert "secret" not in str(info.value)
