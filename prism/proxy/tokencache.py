"""Bearer tokens already verified, so that a client sending the same token on every call pays
for its signature check once (an ES256 verification is ~170 µs of CPU on the development
machine, about what the whole rest of a proxy call costs).

An entry is made only after a token has passed every check (signature, ``alg``, ``iss``,
``aud``, ``exp``, ``nbf``, the subject claim): a token that failed one is never remembered, and
two tokens that differ in any byte (a forged signature on a known payload, say) are two keys.
Each entry keeps:

- the caller's :class:`Identity` as the token gave it (built once);
- the token's validity window, ``nbf - leeway`` to ``exp + leeway`` as PyJWT reads them: every
  hit is checked against the clock again, so a token is never accepted after its ``exp``
  (:meth:`VerifiedTokens.get` says :data:`EXPIRED`, and goes on saying so until the entry
  is evicted);
- the key set's generation it was verified against (:attr:`prism.proxy.jwks.Keys.generation`,
  bumped by every JWKS fetch that brings a key set): a token verified with a key that has since
  been rotated out or revoked is a miss and is verified again, against the keys held now.

The cache is a bounded LRU (``size`` entries, the least recently used goes first): a client
minting tokens in a loop evicts entries, it cannot grow memory. Tokens are at most
``authn.MAX_TOKEN_BYTES`` long, so the bound is on bytes too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from prism.proxy.request import Identity

__all__ = ["EXPIRED", "NOT_YET_VALID", "VerifiedTokens"]

#: What :meth:`VerifiedTokens.get` returns for a token it verified that is no longer valid, or
#: not yet valid, now (the caller refuses it without verifying it again).
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"


class _Entry:
    __slots__ = ("expires", "generation", "identity", "not_before")

    def __init__(
        self, identity: Identity, not_before: float, expires: float, generation: int
    ) -> None:
        self.identity = identity
        self.not_before = not_before
        self.expires = expires
        self.generation = generation


class VerifiedTokens:
    """Verified bearer tokens → the identity they gave (module docstring)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a token cache holds at least one token")
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float, generation: int) -> Identity | str | None:
        """The identity ``token`` gave when it was verified against key-set ``generation``
        and is valid at ``now`` (wall-clock seconds); :data:`EXPIRED` or
        :data:`NOT_YET_VALID` when it was verified but is not valid at ``now``; None when
        it must be verified (never seen, evicted, or verified with another key set)."""
        entries = self._entries
        entry = entries.get(token)
        if entry is None:
            return None
        if entry.generation != generation:
            del entries[token]
            return None
        if now >= entry.expires:
            # Kept (not moved up) until evicted: a client retrying with its expired token is
            # refused without another signature check.
            return EXPIRED
        if now < entry.not_before:
            return NOT_YET_VALID
        entries.move_to_end(token)
        return entry.identity

    def put(
        self, token: str, identity: Identity, not_before: float, expires: float, generation: int
    ) -> None:
        """Remember a token that passed every check against key-set ``generation``: valid
        from ``not_before`` until (not including) ``expires``."""
        entries = self._entries
        entries[token] = _Entry(identity, not_before, expires, generation)
        entries.move_to_end(token)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
