"""The verified-token cache (``prism.proxy.tokencache``) on its own: an LRU bounded in entries,
every hit checked against the clock and the key set's generation. Times are the tokens' own
(plain numbers): nothing here reads a clock."""

from __future__ import annotations

import pytest

from prism.proxy.request import Identity
from prism.proxy.tokencache import EXPIRED, NOT_YET_VALID, VerifiedTokens


def who(name: str) -> Identity:
    return Identity(name, "jwt")


def test_tokencache_hit_gives_the_identity_within_its_window() -> None:
    cache = VerifiedTokens(4)
    alice = who("alice")
    cache.put("t1", alice, not_before=100.0, expires=200.0, generation=0)
    assert cache.get("t1", 100.0, 0) is alice
    assert cache.get("t1", 199.9, 0) is alice
    assert cache.get("t2", 150.0, 0) is None  # another token, even one byte apart


def test_tokencache_expired_token_is_refused_until_evicted() -> None:
    cache = VerifiedTokens(2)
    cache.put("t1", who("alice"), not_before=-float("inf"), expires=200.0, generation=0)
    assert cache.get("t1", 200.0, 0) == EXPIRED  # exp itself is already too late
    assert cache.get("t1", 500.0, 0) == EXPIRED
    cache.put("t2", who("bob"), 0.0, 1000.0, 0)
    assert cache.get("t2", 500.0, 0) == who("bob")
    cache.put("t3", who("carol"), 0.0, 1000.0, 0)  # the expired entry is not kept up: evicted
    assert cache.get("t1", 500.0, 0) is None


def test_tokencache_not_yet_valid_when_the_clock_is_before_nbf() -> None:
    cache = VerifiedTokens(4)
    cache.put("t1", who("alice"), not_before=100.0, expires=200.0, generation=0)
    assert cache.get("t1", 99.0, 0) == NOT_YET_VALID


def test_tokencache_another_key_set_generation_misses_and_drops_the_entry() -> None:
    cache = VerifiedTokens(4)
    cache.put("t1", who("alice"), not_before=0.0, expires=200.0, generation=3)
    assert cache.get("t1", 10.0, 4) is None  # the keys changed: verify again
    assert len(cache) == 0
    assert cache.get("t1", 10.0, 3) is None


def test_tokencache_evicts_the_least_recently_used() -> None:
    cache = VerifiedTokens(2)
    a, b, c = who("a"), who("b"), who("c")
    cache.put("a", a, 0.0, 100.0, 0)
    cache.put("b", b, 0.0, 100.0, 0)
    assert cache.get("a", 1.0, 0) is a  # a is now the most recently used
    cache.put("c", c, 0.0, 100.0, 0)
    assert len(cache) == 2
    assert cache.get("b", 1.0, 0) is None
    assert cache.get("a", 1.0, 0) is a
    assert cache.get("c", 1.0, 0) is c


def test_tokencache_needs_room_for_one_token() -> None:
    with pytest.raises(ValueError, match="at least one"):
        VerifiedTokens(0)
