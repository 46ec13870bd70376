"""Config reload of the ``auth`` section on a real proxy reading a real file: a new JWKS URL
(served over HTTP) is fetched at the reload and its keys verify tokens from then on, the old
URL's refresh stops; a key file that cannot be read rejects the reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml
from authn_testkit import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    Recorder,
    Running,
    Signer,
    ec_signer,
    jwks,
)
from authn_testkit import round_trip as call

import prism.client
from prism.config import load_config
from prism.proxy.app import Proxy
from prism.proxy.configreload import ConfigRejected


def write(path: Path, jwt: dict[str, Any], *, anonymous: bool = False) -> None:
    document = {
        "listen": "127.0.0.1:0",
        "admin": {"enabled": False},
        "shutdown_grace": 1.0,
        "auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, **jwt}},
        "namespaces": [
            {"name": "kv", "plugin": {"name": "memstore"}, "access": {"anonymous": anonymous}}
        ],
    }
    path.write_text(yaml.safe_dump(document))


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(load_config(path), config_path=path).run)
        assert proxy.address is not None
        yield Running(proxy, Recorder(None), f"127.0.0.1:{proxy.address[1]}")
        nursery.cancel_scope.cancel()


async def test_configreload_new_jwks_url_is_fetched_and_its_keys_accepted(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    old_key, new_key = ec_signer("old"), ec_signer("new")
    first = JwksServer(jwks(old_key), cache_control="max-age=120")
    second = JwksServer(jwks(new_key), cache_control="max-age=120")
    path = tmp_path / "prism.yaml"
    async with trio.open_nursery() as servers:
        await servers.start(first.serve)
        await servers.start(second.serve)
        write(path, {"jwks_url": first.url})
        async with running(path) as proxy:
            assert await call(proxy.target, token=old_key.token()) == b"v"
            with pytest.raises(prism.client.Unauthenticated):
                await call(proxy.target, token=new_key.token())

            write(path, {"jwks_url": second.url})
            with trio.fail_after(30):
                result = await proxy.proxy.reload_config()
            assert result.restart_required == []
            assert (first.fetches, second.fetches) == (1, 1)  # fetched during the reload
            assert await call(proxy.target, token=new_key.token()) == b"v"
            with pytest.raises(prism.client.Unauthenticated):
                await call(proxy.target, token=old_key.token())

            # The new URL is refreshed after its max-age; the old one never again.
            for fetches in (2, 3):
                fetched = second.fetched
                clock.jump(121)
                with trio.fail_after(30):
                    await fetched.wait()
                assert second.fetches == fetches
            assert first.fetches == 1
        servers.cancel_scope.cancel()


@dataclass
class PemSetup:
    """A signer, its public key as a PEM file in ``auth.jwt.keys``, and the config file."""

    signer: Signer
    key: Path
    path: Path


@pytest.fixture
def pem(tmp_path: Path) -> PemSetup:
    signer = ec_signer(None)
    setup = PemSetup(signer, signer.public_pem(tmp_path / "key.pem"), tmp_path / "prism.yaml")
    write(setup.path, {"keys": [str(setup.key)]})
    return setup


async def test_configreload_unreadable_key_file_rejects_and_the_old_keys_keep_serving(
    tmp_path: Path, pem: PemSetup
) -> None:
    async with running(pem.path) as proxy:
        assert await call(proxy.target, token=pem.signer.token()) == b"v"
        broken = tmp_path / "broken.pem"
        broken.write_text("not a key")
        write(pem.path, {"keys": [str(broken)]})
        with pytest.raises(ConfigRejected) as rejected:
            await proxy.proxy.reload_config()
        assert "auth.jwt.keys[0]" in rejected.value.message
        assert await call(proxy.target, token=pem.signer.token()) == b"v"


async def test_configreload_namespace_admitting_anonymous_callers_admits_them(
    pem: PemSetup,
) -> None:
    async with running(pem.path) as proxy:
        with pytest.raises(prism.client.Unauthenticated):
            await call(proxy.target)
        write(pem.path, {"keys": [str(pem.key)]}, anonymous=True)
        result = await proxy.proxy.reload_config()
        assert result.reloaded == ["kv"]
        assert await call(proxy.target) == b"v"
        assert await call(proxy.target, token=pem.signer.token()) == b"v"
