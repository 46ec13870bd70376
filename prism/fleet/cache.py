"""The on-disk copy of the last good config read from etcd, so that a proxy can start while
etcd is down. One JSON file (0600, replaced atomically): the etcd key, the document's
``mod_revision`` (the watch resumes after it) and its text, byte for byte."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CachedConfig", "read_cache", "write_cache"]

_FORMAT = "prism-etcd-config-cache/1"


@dataclass(frozen=True, slots=True)
class CachedConfig:
    key: str
    mod_revision: int
    data: bytes


def write_cache(path: Path, entry: CachedConfig) -> None:
    """Replace the cache file with ``entry`` (its directory is created 0700 if missing). The
    file is 0600 from the start: the document may hold credentials."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = json.dumps(
        {
            "format": _FORMAT,
            "key": entry.key,
            "mod_revision": entry.mod_revision,
            "text": entry.data.decode(),
        }
    )
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_cache(path: Path, key: str) -> CachedConfig:
    """The cached document for ``key``; ValueError saying why there is none usable."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no config cache at {path}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"config cache {path} is unreadable: {type(exc).__name__}") from None
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ValueError(f"config cache {path} is not a prism etcd config cache")
    if raw.get("key") != key:
        raise ValueError(f"config cache {path} holds etcd key {raw.get('key')!r}, not {key!r}")
    text, revision = raw.get("text"), raw.get("mod_revision")
    if not isinstance(text, str) or not isinstance(revision, int):
        raise ValueError(f"config cache {path} is damaged")
    return CachedConfig(key, revision, text.encode())
