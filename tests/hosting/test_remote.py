"""A remote plugin service that cannot be reached: the proxy starts anyway, the namespace is
NOT_SERVING and says why, and it serves once the service is there. TLS failures say which."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trustme
from host_testkit import (
    Certs,
    free_port,
    namespace,
    proxy_config,
    remote_service,
    result,
    running_proxy,
)

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest
from prism.config import NamespaceConfig, PluginConfig, RemoteTlsConfig
from prism.grpc.health import ServingStatus


def remote_namespace(port: int, tls: RemoteTlsConfig) -> NamespaceConfig:
    return NamespaceConfig(
        "far", PluginConfig("memstore", mode="remote", endpoint=f"127.0.0.1:{port}", tls=tls)
    )


async def test_remote_unreachable_at_start_does_not_stop_the_proxy(tmp_path: Path) -> None:
    port = free_port()
    certs = Certs.make(tmp_path)
    config = proxy_config(remote_namespace(port, certs.remote_tls()), namespace("kv"))
    async with running_proxy(config) as running:
        # The other namespace serves; the remote one is NOT_SERVING and says why.
        await running.execute("kv", "set", SetRequest(key="k", value=b"v"))
        assert running.proxy.health.get("prism.namespace/far") == ServingStatus.NOT_SERVING
        with pytest.raises(pg.Unavailable, match=r"cannot reach the remote plugin at 127\.0\.0\.1"):
            await running.execute("far", "get", GetRequest(key="k"))
        with remote_service(tmp_path, port=port, certs=certs):
            with trio.fail_after(30):  # the host reconnects on its own
                while running.proxy.health.get("prism.namespace/far") != ServingStatus.SERVING:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            await running.execute("far", "set", SetRequest(key="k", value=b"far"))
            got = await running.execute("far", "get", GetRequest(key="k"))
            assert result(got, GetResponse).value == b"far"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "certificate verify failed: unknown CA"),
        ("wrong hostname", "certificate verify failed: hostname mismatch"),
    ],
)
async def test_remote_tls_failure_says_why(
    case: str, expected: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    certs = Certs.make(tmp_path)
    tls = certs.remote_tls()
    if case == "wrong CA":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        tls = RemoteTlsConfig(ca=other, cert=certs.client, key=certs.client)
    else:
        tls = RemoteTlsConfig(
            ca=certs.ca, cert=certs.client, key=certs.client, server_hostname="plugin.example"
        )
    with remote_service(tmp_path, port=port, certs=certs) as service:
        async with running_proxy(proxy_config(remote_namespace(port, tls))) as running:
            with pytest.raises(pg.Unavailable, match=expected):
                await running.execute("far", "get", GetRequest(key="k"))
        assert any(
            expected in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records
        )
        # The service logged the rejected handshake, with the peer's address and the reason.
        with trio.fail_after(30):
            while "TLS handshake with 127.0.0.1:" not in service.log.read_text():  # noqa: ASYNC110
                await trio.sleep(0.05)
        line = next(
            line for line in service.log.read_text().splitlines() if "TLS handshake with" in line
        )
        assert " WARNING " in f" {line} "
        assert "rejected: TLS:" in line
