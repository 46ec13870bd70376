"""Memcached's meta protocol (``mg``, ``ms``, ``md``, ``mn``), sans-IO: keys, commands, replies.

Keys: memcached keys are at most 250 bytes without spaces or control characters. The plugin
*maps* every key of the data model (any UTF-8 text) to the memcached key with exactly its
UTF-8 bytes: a key that is already a valid memcached key travels as it is; one with a space or
a control character travels base64-encoded with the meta protocol's ``b`` flag, which names
the same binary key. Two different keys never meet, and nothing is rewritten. What cannot be
mapped is refused with INVALID_ARGUMENT: a key over 250 bytes, or a key that must be encoded
and is over 186 bytes (memcached caps the encoded token at 250 characters).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from prism.sdk import InvalidArgument

__all__ = [
    "MAX_ENCODED_KEY_BYTES",
    "MAX_KEY_BYTES",
    "Reader",
    "Reply",
    "get_commands",
    "key_token",
]

MAX_KEY_BYTES = 250
MAX_ENCODED_KEY_BYTES = 186  # base64 of 186 bytes is 248 characters, of 187 it is 252
#: Bytes that cannot appear in a key as it is: space and the control characters.
_UNSAFE = frozenset(range(0x21)) | {0x7F}


def key_token(key: bytes) -> tuple[bytes, bool]:
    """The key as a command token, and whether it is base64 (needs the ``b`` flag)."""
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(f"key is longer than memcached's limit of {MAX_KEY_BYTES} bytes")
    if _UNSAFE.isdisjoint(key):
        return key, False
    if len(key) > MAX_ENCODED_KEY_BYTES:
        raise InvalidArgument(
            f"a key with spaces or control characters travels base64-encoded, which memcached "
            f"limits to {MAX_ENCODED_KEY_BYTES} bytes of key"
        )
    return base64.b64encode(key), True


def command(verb: bytes, key: bytes, flags: list[bytes], data: bytes | None = None) -> bytes:
    token, encoded = key_token(key)
    if encoded:
        flags = [b"b", *flags]
    if data is None:
        return b" ".join([verb, token, *flags]) + b"\r\n"
    return b" ".join([verb, token, b"%d" % len(data), *flags]) + b"\r\n" + data + b"\r\n"


def get_commands(keys: list[bytes], flags: bytes) -> bytes:
    """``command(b"mg", key, flags)`` for every key, joined (a pipeline); ``flags`` is the
    flags' text (``b" v c t"``, with its leading space)."""
    tail = flags + b"\r\n"
    encoded_tail = b" b" + tail
    out = []
    for key in keys:
        token, encoded = key_token(key)
        out.append(b"mg " + token + (encoded_tail if encoded else tail))
    return b"".join(out)


@dataclass
class Reply:
    """One meta reply: its code (``VA``, ``HD``, ``EN``, ``NF``, ``NS``, ``EX``, ``MN``, or
    an error line's first word), its flags by letter, and the value of a ``VA``."""

    code: bytes
    flags: dict[str, bytes]
    value: bytes | None = None
    line: bytes = b""

    @property
    def error(self) -> bool:
        return self.code in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")

    def int_flag(self, letter: str) -> int | None:
        raw = self.flags.get(letter)
        return None if raw is None else int(raw)


class ProtocolError(Exception):
    """The server sent something that is not a meta reply."""


class Reader:
    """Feed bytes, take complete replies. Taken replies are passed over, not cut out of the
    buffer one by one: the buffer is compacted on the next ``feed`` (a 100-reply pipeline
    would otherwise move the rest of its bytes 100 times)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def gets(self) -> Reply | None:
        buffer = self._buffer
        pos = self._pos
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            if len(buffer) - pos > 8192:
                raise ProtocolError("a reply line longer than 8 KiB")
            return None
        line = bytes(buffer[pos:end])
        parts = line.split(b" ")
        code = parts[0]
        if code == b"VA":
            if len(parts) < 2 or not parts[1].isdigit():
                raise ProtocolError(f"malformed VA line {line[:64]!r}")
            size = int(parts[1])
            start = end + 2
            if len(buffer) < start + size + 2:
                return None
            value = bytes(buffer[start : start + size])
            self._pos = start + size + 2
            return Reply(code, _flags(parts[2:]), value, line)
        if code in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"):
            self._pos = end + 2
            return Reply(code, {}, line=line)
        if code not in (b"HD", b"EN", b"NF", b"NS", b"EX", b"MN"):
            raise ProtocolError(f"unexpected reply {line[:64]!r}")
        self._pos = end + 2
        return Reply(code, _flags(parts[1:]), line=line)


def _flags(tokens: list[bytes]) -> dict[str, bytes]:
    return {chr(t[0]): t[1:] for t in tokens if t}
