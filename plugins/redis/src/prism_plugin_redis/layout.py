"""How the key-value model is laid out in Redis.

- A key is ``key_prefix + key`` (UTF-8), a plain Redis string key, so TTLs, SCAN, EXISTS and
  DEL act on it natively.
- Its value is ``b"\\x01" + etag + value``: a layout version byte, the 8 random bytes of the
  etag of this write (shown to clients as 16 hex digits), then the bytes the client stored.
  Keeping the etag inside the value means one GET (or MGET) reads both, a plain SET (or SET NX
  / SET PX) writes both and replaces the TTL as the data model says, and nothing can separate
  the two; every write draws a new etag, even of the same bytes.
- The plugin's own keys (pub/sub sequence counters) are ``key_prefix + b"\\xff" + ...``: a byte
  UTF-8 never produces, so they can never collide with a key of the data model, and
  ``list_keys`` skips them.
"""

from __future__ import annotations

import os

from prism.sdk import FailedPrecondition

__all__ = ["ETAG_BYTES", "HEADER", "VERSION", "Layout"]

VERSION = b"\x01"
ETAG_BYTES = 8
HEADER = 1 + ETAG_BYTES
INTERNAL = b"\xff"


def new_etag() -> bytes:
    return os.urandom(ETAG_BYTES)


def parse_etag(text: str) -> bytes | None:
    """The etag bytes a client's ``if_match`` names; None when it cannot be one of ours (it
    then matches nothing)."""
    if len(text) != 2 * ETAG_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


class Layout:
    def __init__(self, key_prefix: str) -> None:
        self.prefix = key_prefix.encode()

    def key(self, key: str) -> bytes:
        return self.prefix + key.encode()

    def channel(self, topic: str) -> bytes:
        return self.prefix + topic.encode()

    def sequence_key(self, topic: str) -> bytes:
        return self.prefix + INTERNAL + b"seq:" + topic.encode()

    def user_key(self, stored: bytes) -> str | None:
        """The data-model key of a stored key SCAN found; None for the plugin's own keys and
        keys that are not UTF-8 (written by something else)."""
        rest = stored[len(self.prefix) :]
        if rest.startswith(INTERNAL):
            return None
        try:
            return rest.decode()
        except UnicodeDecodeError:
            return None

    @staticmethod
    def pack(etag: bytes, value: bytes) -> bytes:
        return VERSION + etag + value

    @staticmethod
    def unpack(stored: bytes, key: str) -> tuple[bytes, str]:
        """(value, etag as hex) of a stored value; FAILED_PRECONDITION for a value this plugin
        did not write (another client's, or an ``eval`` script's)."""
        if len(stored) < HEADER or stored[:1] != VERSION:
            raise FailedPrecondition(f"key {key!r} holds a value the redis plugin did not write")
        return stored[HEADER:], stored[1:HEADER].hex()


def glob_escape(text: bytes) -> bytes:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH)."""
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)
