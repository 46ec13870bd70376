"""``prism serve``, ``prism config push`` and ``prism fleet status`` against an etcd that wants
TLS with a client certificate and user/password auth, the password given as a secret
reference: it works, and the password shows in no log, output or process argument."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from etcd_server import PASSWORD, EtcdServer, EtcdTLS, enable_auth, etcd_server, free_port
from fleet_testkit import document, ns, prism, running, serves, serving, set_, wait_for
from host_testkit import Certs

from prism.etcd import EtcdAccess, EtcdTarget, parse_target


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs.make(tmp_path_factory.mktemp("etcd-certs"))


@pytest.fixture(scope="module")
def etcd(certs: Certs) -> Iterator[EtcdServer]:
    tls = EtcdTLS(certs.ca, certs.server, certs.client)
    with etcd_server(tls=tls) as server:
        enable_auth(server.endpoint, "/fleet/", context=tls.context())
        yield server


def access(certs: Certs, secrets: Path) -> list[str]:
    return [
        "--etcd-cacert",
        str(certs.ca),
        "--etcd-cert",
        str(certs.client),
        "--etcd-key",
        str(certs.client),
        "--etcd-user",
        "prism",
        "--etcd-password",
        "{{ secret:etcd-password }}",
        "--etcd-secrets-dir",
        str(secrets),
    ]


async def test_serve_push_status_over_tls_with_auth_never_show_the_password(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "etcd-password").write_text(PASSWORD + "\n")
    url = f"{etcd.endpoint}/fleet/a"
    options = access(certs, secrets)
    file = tmp_path / "prism.json"
    file.write_bytes(document(ns("kv")))
    outputs: list[bytes] = []
    with trio.fail_after(120):
        pushed = await prism("config", "push", str(file), "--etcd", url, *options)
        outputs += [pushed.stdout, pushed.stderr]
        assert pushed.returncode == 0, pushed.stderr
        port = free_port()
        home = tmp_path / "proxy"
        home.mkdir()
        async with serving(home, parse_target(url), port, *options) as log:
            await serves(f"127.0.0.1:{port}", "kv")
            file.write_bytes(document(ns("kv"), ns("more")))
            pushed = await prism("config", "push", str(file), "--etcd", url, *options)
            outputs += [pushed.stdout, pushed.stderr]
            await serves(f"127.0.0.1:{port}", "more")
            while True:
                status = await prism("fleet", "status", "--etcd", url, "--json", *options)
                outputs += [status.stdout, status.stderr]
                assert status.returncode == 0, status.stderr
                listed = json.loads(status.stdout)["members"]
                if listed:
                    break
                await trio.sleep(0.1)
            assert listed[0]["address"] == f"127.0.0.1:{port}"
            outputs.append(log.read_bytes())
    assert all(PASSWORD.encode() not in out for out in outputs)
    assert PASSWORD not in " ".join(options)


async def test_cli_refuses_a_literal_password_and_a_wrong_one(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    url = f"{etcd.endpoint}/fleet/b"
    tls = access(certs, tmp_path)[:6]

    async def status(password: str) -> tuple[int, str]:
        answer = await prism(
            "fleet", "status", "--etcd", url, *tls, "--etcd-user", "prism",
            "--etcd-password", password,
        )  # fmt: skip
        return answer.returncode, answer.stderr.decode()

    with trio.fail_after(60):
        code, err = await status(PASSWORD)
        assert code == 1
        assert "--etcd-password: not a reference" in err
        assert PASSWORD not in err
        (tmp_path / "wrong").write_text("not-the-password")
        code, err = await status(f"{{{{ file:{tmp_path / 'wrong'} }}}}")
        assert code == 1
        assert "etcd authenticate as prism" in err
        assert "authentication failed" in err
        assert "not-the-password" not in err
        missing = await prism("fleet", "status", "--etcd", url, "--etcd-cacert", "/nonexistent")
        assert missing.returncode == 1
        assert "etcd TLS files" in missing.stderr.decode()
        assert "No such file or directory" in missing.stderr.decode()


async def test_source_with_auth_resumes_its_watch_after_etcd_forgets_the_token(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    """etcd's tokens live in its memory: after a restart the watch's token is refused, and the
    proxy authenticates again and picks up the next change."""
    target = parse_target(f"{etcd.endpoint}/fleet/c")
    target = EtcdTarget(
        target.endpoint,
        target.prefix,
        EtcdAccess(
            ca=certs.ca, cert=certs.client, key=certs.client, user="prism", password=PASSWORD
        ),
    )
    async with target.client() as client:
        await client.put(target.config_key, document(ns("kv")))
    with trio.fail_after(120):
        async with running(target, tmp_path / "cache.json") as (_, source, front):
            await trio.to_thread.run_sync(etcd.kill)
            while source.etcd_error is None:
                await source.changed()
            await trio.to_thread.run_sync(etcd.start)
            async with target.client() as client:
                latest = await client.put(target.config_key, document(ns("kv"), ns("after")))
            await wait_for(source, latest)
            assert source.applied_revision == latest
            await set_(front, "after", "k", b"1")
