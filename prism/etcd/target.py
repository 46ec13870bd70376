"""``etcd://HOST:PORT/PREFIX``: where a fleet's keys live."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prism.etcd.client import EtcdAccess, EtcdClient

__all__ = ["EtcdTarget", "is_etcd_url", "parse_target"]

_SCHEMES = {"etcd": "http", "http": "http", "https": "https"}


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """``endpoint``: etcd's client URL (``http://HOST:PORT``); ``prefix``: the fleet's key
    prefix, always ending in ``/`` (``/prism/`` for ``etcd://HOST:PORT/prism``); ``access``:
    TLS and credentials (never part of the URL)."""

    endpoint: str
    prefix: str
    access: EtcdAccess = field(default_factory=EtcdAccess, compare=False)

    def client(self) -> EtcdClient:
        """A client for this target's endpoint, with its access."""
        return EtcdClient(self.endpoint, access=self.access)

    @property
    def config_key(self) -> str:
        """Where the fleet's config document is."""
        return self.prefix + "config"

    @property
    def members_prefix(self) -> str:
        """Under which each proxy registers itself."""
        return self.prefix + "members/"

    def __str__(self) -> str:
        return f"{self.endpoint}{self.prefix}"


def is_etcd_url(text: str) -> bool:
    """Whether ``text`` names etcd (``etcd://``, ``http://``, ``https://``) rather than a file."""
    return text.split("://", 1)[0] in _SCHEMES and "://" in text


def parse_target(text: str) -> EtcdTarget:
    """``etcd://HOST:PORT/PREFIX`` (or ``http(s)://HOST:PORT/PREFIX``) → EtcdTarget.
    ValueError, naming what is wrong, for anything else. User info is refused: etcd
    credentials would end up in process listings and logs."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"not an etcd URL (etcd://HOST:PORT/PREFIX): {text!r}") from None
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not an etcd URL (etcd://HOST:PORT/PREFIX): {text!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("an etcd URL must not hold credentials (user:password@)")
    if parts.query or parts.fragment:
        raise ValueError("an etcd URL has no query or fragment: etcd://HOST:PORT/PREFIX")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    endpoint = f"{scheme}://{host}:{port or 2379}"
    prefix = parts.path or "/"
    if not prefix.endswith("/"):
        prefix += "/"
    return EtcdTarget(endpoint, prefix)
