"""Secret references in credentials (prism/config/secrets.py): each form and source, each error
(naming the field and the secret, never a value), rotation, and no value in any log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from prism import grpc as pg
from prism._proto.prism.admin.v1 import ReloadNamespaceRequest, ReloadNamespaceResponse
from prism._proto.prism.data.v1 import GetRequest, GetResponse
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse
from prism.config import ConfigError, SecretsConfig, load_config, parse_config, resolve_credentials
from prism.proxy.app import Proxy
from prism.sdk.typed import pack, unpack

TOKEN = "s3cr3t-7f1e-token-value"
ROTATED = "r0tated-91ab-token-value"


def resolve(value: str, secrets: SecretsConfig | None = None, **environ: str) -> str:
    resolved = resolve_credentials({"token": value}, secrets or SecretsConfig(), environ=environ)
    return resolved["token"]


def error(value: str, secrets: SecretsConfig | None = None, **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(value, secrets, **environ)
    (line,) = info.value.errors
    return line


def test_secrets_env_form() -> None:
    assert resolve("{{ env:PG_PASSWORD }}", PG_PASSWORD=TOKEN) == TOKEN
    assert resolve("{{env:PG_PASSWORD}}", PG_PASSWORD=TOKEN) == TOKEN


def test_secrets_file_form_drops_trailing_newlines(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert resolve(f"{{{{ file:{tmp_path / 'token'} }}}}") == TOKEN


def test_secrets_text_around_references_is_kept(tmp_path: Path) -> None:
    value = "postgres://app:{{ env:PW }}@db:5432/{{ env:DB }}"
    assert resolve(value, PW=TOKEN, DB="orders") == f"postgres://app:{TOKEN}@db:5432/orders"
    assert resolve("no references at all") == "no references at all"


def test_secrets_secret_form_reads_the_directory_first(tmp_path: Path) -> None:
    (tmp_path / "pg-password").write_text(TOKEN + "\n")
    secrets = SecretsConfig(directory=tmp_path)
    assert resolve("{{ secret:pg-password }}", secrets, PRISM_SECRET_PG_PASSWORD="env") == TOKEN


def test_secrets_secret_form_then_the_prefixed_environment_variable(tmp_path: Path) -> None:
    secrets = SecretsConfig(directory=tmp_path)  # no file for it there
    assert resolve("{{ secret:pg-password }}", secrets, PRISM_SECRET_PG_PASSWORD=TOKEN) == TOKEN
    assert resolve("{{ secret:api.key }}", PRISM_SECRET_API_KEY=TOKEN) == TOKEN
    custom = SecretsConfig(env_prefix="MYAPP_")
    assert resolve("{{ secret:token }}", custom, MYAPP_TOKEN=TOKEN) == TOKEN


def test_secrets_sources_come_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(TOKEN)
    path = tmp_path / "prism.yaml"
    path.write_text(
        "secrets: {directory: secrets, env_prefix: null}\n"
        "namespaces:\n  - name: kv\n    plugin: {name: memstore}\n"
        "    credentials: {token: '{{ secret:token }}'}\n"
    )
    config = load_config(path)
    assert config.secrets == SecretsConfig(directory=tmp_path / "secrets", env_prefix=None)
    assert config.resolve_credentials(config.namespace("kv")) == {"token": TOKEN}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "{{ vault:db/pw }}",
            "unknown secret reference kind 'vault': expected env, file or secret",
        ),
        ("{{ ENV:PW }}", "unknown secret reference kind 'ENV' (kinds are lower case)"),
        ("{{ env:not a name }}", "{{ env:... }} needs an environment variable name"),
        ("{{ secret:../etc/passwd }}", "{{ secret:... }} needs a secret name"),
        ("{{ file: }}", "{{ file:... }} needs a path"),
        ("{{ PW }}", "a '{{ ... }}' that is not a secret reference"),
        ("pass{{word", "'{{' without a closing '}}'"),
    ],
)
def test_secrets_malformed_references_are_config_errors(value: str, message: str) -> None:
    found = error(value)
    assert found.startswith(f"credentials.token: {message}")
    # And the whole file is refused at load, naming the field.
    raw: dict[str, Any] = {
        "namespaces": [{"name": "kv", "plugin": {"name": "m"}, "credentials": {"token": value}}]
    }
    with pytest.raises(ConfigError, match=r"^namespaces\[0\]\.credentials\.token: "):
        parse_config(raw)


def test_secrets_missing_ones_are_config_errors_naming_the_secret(tmp_path: Path) -> None:
    assert error("{{ env:PG_PASSWORD }}") == (
        "credentials.token: environment variable PG_PASSWORD is not set"
    )
    assert error(f"{{{{ file:{tmp_path / 'nope'} }}}}") == (
        f"credentials.token: cannot read secret file {tmp_path / 'nope'}: No such file or directory"
    )
    assert error("{{ secret:pg-password }}", SecretsConfig(directory=tmp_path)) == (
        "credentials.token: secret 'pg-password' not found "
        f"(no file {tmp_path / 'pg-password'}; no environment variable PRISM_SECRET_PG_PASSWORD)"
    )
    assert error("{{ secret:pg }}", SecretsConfig(env_prefix=None)) == (
        "credentials.token: secret 'pg' not found (no secret sources are configured (secrets:))"
    )
    (tmp_path / "dir").mkdir()
    assert error("{{ secret:dir }}", SecretsConfig(directory=tmp_path)).startswith(
        f"credentials.token: cannot read secret 'dir' from {tmp_path / 'dir'}: "
    )


def test_secrets_a_file_that_is_not_text_is_an_error_without_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"\xff\xfe" + TOKEN.encode())
    found = error("{{ secret:token }}", SecretsConfig(directory=tmp_path))
    assert found == f"credentials.token: cannot read secret 'token' from {tmp_path / 'token'}: " + (
        "not UTF-8 text"
    )


def test_secrets_every_unresolvable_credential_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_credentials(
            {"a": "{{ env:A }}", "b": "ok", "c": "{{ secret:c }}"},
            SecretsConfig(),
            where="namespaces[3].credentials",
            environ={},
        )
    assert info.value.errors == (
        "namespaces[3].credentials.a: environment variable A is not set",
        "namespaces[3].credentials.c: secret 'c' not found (no environment variable "
        "PRISM_SECRET_C)",
    )


def test_secrets_non_string_credential_is_a_config_error() -> None:
    raw = {"namespaces": [{"name": "kv", "plugin": {"name": "m"}, "credentials": {"pin": 1234}}]}
    with pytest.raises(
        ConfigError, match=r"^namespaces\[0\]\.credentials\.pin: expected a string$"
    ):
        parse_config(raw)


def test_secrets_prefix_must_start_a_variable_name() -> None:
    with pytest.raises(ConfigError, match=r"^secrets\.env_prefix: '1X' cannot start"):
        parse_config({"secrets": {"env_prefix": "1X"}})


def test_secrets_rotation_file_rewritten_next_resolve_sees_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    secrets = SecretsConfig(directory=tmp_path)
    assert resolve("{{ secret:token }}", secrets) == TOKEN
    (tmp_path / "token").write_text(ROTATED)
    assert resolve("{{ secret:token }}", secrets) == ROTATED


# -- through the proxy: the values a plugin receives, a reload after rotation, the logs -----


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "token").write_text(TOKEN + "\n")
    path = tmp_path / "prism.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "admin: {listen: '127.0.0.1:0'}\n"
        "shutdown_grace: 1\n"
        "secrets: {directory: secrets}\n"
        "namespaces:\n"
        "  - name: echo\n"
        "    plugin: {name: 'secret_plugin:CredentialEcho', drain_grace: 1}\n"
        "    credentials:\n"
        "      token: '{{ secret:token }}'\n"
        "      url: 'https://app:{{ env:PRISM_TEST_SECRET_PW }}@backend'\n"
    )
    return path


@asynccontextmanager
async def serving(config_path: Path) -> AsyncIterator[tuple[Proxy, pg.Channel, pg.Channel]]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(load_config(config_path)).run)
        assert proxy.address is not None
        assert proxy.admin_address is not None
        async with (
            pg.open_channel(f"{proxy.address[0]}:{proxy.address[1]}") as front,
            pg.open_channel(f"127.0.0.1:{proxy.admin_address[1]}") as admin,
        ):
            yield proxy, front, admin
        nursery.cancel_scope.cancel()


async def credential(channel: pg.Channel, key: str) -> str:
    request = ExecuteRequest(namespace="echo", operation="get", typed_params=pack(GetRequest(key)))
    response = await channel.unary_unary(
        "/prism.proxy.v1.DataProxy/Execute", request, ExecuteResponse
    )
    return unpack(response.typed_result, GetResponse).value.decode()


async def reload(admin: pg.Channel) -> ReloadNamespaceResponse:
    response: ReloadNamespaceResponse = await admin.unary_unary(
        "/prism.admin.v1.Admin/ReloadNamespace",
        ReloadNamespaceRequest(namespace="echo"),
        ReloadNamespaceResponse,
    )
    return response


async def test_secrets_rotation_is_write_file_then_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PRISM_TEST_SECRET_PW", "pw-0c3d-in-the-env")
    path = write_config(tmp_path)
    with trio.fail_after(60):
        async with serving(path) as (_, front, admin):
            assert await credential(front, "token") == TOKEN
            assert await credential(front, "url") == "https://app:pw-0c3d-in-the-env@backend"

            (tmp_path / "secrets" / "token").write_text(ROTATED + "\n")
            assert await credential(front, "token") == TOKEN  # until the next instance start
            await reload(admin)
            assert await credential(front, "token") == ROTATED

            # A secret that went missing fails the reload, naming it; the old instance serves on.
            (tmp_path / "secrets" / "token").unlink()
            with pytest.raises(pg.GrpcError) as info:
                await reload(admin)
            assert info.value.status == pg.Status.FAILED_PRECONDITION
            assert "namespaces[0].credentials.token: secret 'token' not found" in str(info.value)
            assert await credential(front, "token") == ROTATED

            # A plugin that refuses its credentials: its error goes through the SDK's redactor.
            (tmp_path / "secrets" / "token").write_text("rejected")
            with pytest.raises(pg.GrpcError) as refused:
                await reload(admin)
            assert "UNAUTHENTICATED" in str(refused.value)
    shown = caplog.text + str(info.value) + str(refused.value)
    for value in (TOKEN, ROTATED, "pw-0c3d-in-the-env", "refused token rejected"):
        assert value not in shown
    assert "initialized with credentials Credentials(keys=['token', 'url'], values withheld)" in (
        caplog.text
    )


async def test_secrets_missing_at_start_fails_the_load_naming_field_and_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRISM_TEST_SECRET_PW", raising=False)
    path = write_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == (
        "namespaces[0].credentials.url: environment variable PRISM_TEST_SECRET_PW is not set",
    )
