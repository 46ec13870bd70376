"""prism.etcd.client against a secured etcd: user/password auth (tokens) and TLS with a client
certificate, each a real etcd configured so."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from etcd_server import PASSWORD, EtcdServer, EtcdTLS, enable_auth, etcd_server

from prism.etcd import EtcdAccess, EtcdClient, EtcdError, EtcdUnavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hosting"))

from host_testkit import Certs


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        enable_auth(server.endpoint, "/fleet/")
        yield server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs.make(tmp_path_factory.mktemp("etcd-certs"))


@pytest.fixture(scope="module")
def etcd_tls(certs: Certs) -> Iterator[EtcdServer]:
    with etcd_server(tls=EtcdTLS(certs.ca, certs.server, certs.client)) as server:
        yield server


def prism_user() -> EtcdAccess:
    return EtcdAccess(user="prism", password=PASSWORD)


async def test_client_auth_reads_writes_and_watches_with_a_token(etcd: EtcdServer) -> None:
    async with EtcdClient(etcd.endpoint, access=prism_user()) as client:
        revision = await client.put("/fleet/a", b"1")
        assert (await client.range("/fleet/a")).kvs[0].value == b"1"
        with trio.fail_after(30):
            async with client.watch("/fleet/a", start_revision=revision) as batches:
                async for batch in batches:
                    assert batch.events[0].kv.value == b"1"
                    break


async def test_client_auth_outside_its_role_is_refused(etcd: EtcdServer) -> None:
    async with EtcdClient(etcd.endpoint, access=prism_user()) as client:
        with pytest.raises(EtcdError, match="permission denied"):
            await client.put("/elsewhere", b"1")


async def test_client_without_credentials_is_refused(etcd: EtcdServer) -> None:
    async with EtcdClient(etcd.endpoint) as client:
        with pytest.raises(EtcdError, match="user name is empty"):
            await client.range("/fleet/a")


async def test_client_auth_wrong_password_never_shows_it(etcd: EtcdServer) -> None:
    wrong = "wrong-pw-never-shown"
    access = EtcdAccess(user="prism", password=wrong)
    assert wrong not in repr(access)
    async with EtcdClient(etcd.endpoint, access=access) as client:
        with pytest.raises(EtcdError, match="authenticate as prism") as caught:
            await client.range("/fleet/a")
    assert "authentication failed" in str(caught.value)
    assert wrong not in str(caught.value)


async def test_client_auth_authenticates_again_after_etcd_restarts(etcd: EtcdServer) -> None:
    """etcd's simple tokens live in its memory: after a restart the client's token may be
    refused. A call then takes a new one at once; a watch refused so fails (its caller
    resumes it, as the config source does), and the next watch authenticates again."""
    async with EtcdClient(etcd.endpoint, access=prism_user()) as client:
        await client.put("/fleet/restart", b"before")
        refused: list[str] = []
        for _ in range(2):
            await trio.to_thread.run_sync(etcd.kill)
            await trio.to_thread.run_sync(etcd.start)
            with trio.fail_after(30):
                revision = await client.put("/fleet/restart", b"after")
                for attempt in range(2):
                    try:
                        async with client.watch("/fleet/restart", start_revision=revision) as w:
                            async for batch in w:
                                assert batch.events[0].kv.value == b"after"
                                break
                        break
                    except EtcdError as exc:
                        refused.append(exc.reason)
                        assert attempt == 0
        assert (await client.range("/fleet/restart")).kvs[0].value == b"after"
    assert all("invalid auth token" in reason for reason in refused)


async def test_client_tls_with_a_client_certificate(etcd_tls: EtcdServer, certs: Certs) -> None:
    access = EtcdAccess(ca=certs.ca, cert=certs.client, key=certs.client)
    async with EtcdClient(etcd_tls.endpoint, access=access) as client:
        revision = await client.put("/tls/a", b"1")
        assert (await client.range("/tls/a")).revision == revision
        lease = await client.lease_grant(5)
        assert await client.lease_keepalive(lease) > 0


async def test_client_tls_untrusted_or_without_certificate_is_unavailable(
    etcd_tls: EtcdServer, certs: Certs
) -> None:
    # The system roots do not trust the test CA.
    async with EtcdClient(etcd_tls.endpoint) as client:
        with pytest.raises(EtcdUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await client.range("/tls/a")
    # Trusted, but etcd wants a client certificate.
    async with EtcdClient(etcd_tls.endpoint, access=EtcdAccess(ca=certs.ca)) as client:
        with pytest.raises(EtcdUnavailable):
            await client.range("/tls/a")
