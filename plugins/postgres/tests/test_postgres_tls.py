"""TLS to the server (config.tls_mode, tls_ca_file): verified against the server's certificate,
refused with the wrong CA, and seen by the server (pg_stat_ssl)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import pytest
import trustme
from backends import PostgresServer
from conftest import config_for
from prism_plugin_postgres import PostgresPlugin

from prism._proto.prism.data.v1 import QueryRequest
from prism.sdk import FailedPrecondition
from prism.sdk.testing import PluginHarness


def enable_tls(server: PostgresServer, tmp_path: Path) -> Path:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory = server.server.directory
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    os.chmod(directory / "server.key", 0o600)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for name in ("server.crt", "server.key"):
            os.chown(directory / name, entry.pw_uid, entry.pw_gid)
    server.admin.execute(f"ALTER SYSTEM SET ssl_cert_file = '{directory / 'server.crt'}'")
    server.admin.execute(f"ALTER SYSTEM SET ssl_key_file = '{directory / 'server.key'}'")
    server.admin.execute("ALTER SYSTEM SET ssl = on")
    server.admin.execute("SELECT pg_reload_conf()")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


async def test_tls_verify_full_connects_encrypted(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    ca_file = enable_tls(own_postgres, tmp_path)
    config = config_for(own_postgres, tls_mode="verify-full", tls_ca_file=str(ca_file))
    credentials = own_postgres.credentials.as_map()
    async with PluginHarness(PostgresPlugin, config=config, credentials=credentials) as h:
        result: Any = await h.execute(
            "query",
            QueryRequest(sql="SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
        )
        assert result.rows[0].values[0].bool_value is True
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    wrong = {**config, "tls_ca_file": str(other)}
    with pytest.raises(FailedPrecondition, match="TLS to PostgreSQL"):
        async with PluginHarness(PostgresPlugin, config=wrong, credentials=credentials):
            pass
