"""etcd URLs: ``etcd://HOST:PORT/PREFIX``."""

from __future__ import annotations

import pytest

from prism.etcd import EtcdTarget, is_etcd_url, parse_target


def test_parse_target_endpoint_and_prefix() -> None:
    target = parse_target("etcd://10.0.0.5:2380/prism/prod")
    assert target == EtcdTarget("http://10.0.0.5:2380", "/prism/prod/")
    assert target.config_key == "/prism/prod/config"
    assert target.members_prefix == "/prism/prod/members/"
    assert parse_target("etcd://etcd") == EtcdTarget("http://etcd:2379", "/")
    assert parse_target("https://[::1]:2379/p/").endpoint == "https://[::1]:2379"


@pytest.mark.parametrize(
    "text", ["etcd://", "ftp://h:1/p", "etcd://h:notaport/p", "etcd://h:1/p?x=1", "/etc/x.yaml"]
)
def test_parse_target_refuses_what_is_not_an_etcd_url(text: str) -> None:
    with pytest.raises(ValueError, match="etcd"):
        parse_target(text)


def test_parse_target_refuses_credentials_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="must not hold credentials") as caught:
        parse_target("etcd://root:s3cret@h:2379/p")
    assert "s3cret" not in str(caught.value)


def test_is_etcd_url_tells_urls_from_files() -> None:
    assert is_etcd_url("etcd://h:1/p")
    assert is_etcd_url("https://h:1/p")
    assert not is_etcd_url("prism.yaml")
    assert not is_etcd_url("dir/etcd:/x.yaml")
