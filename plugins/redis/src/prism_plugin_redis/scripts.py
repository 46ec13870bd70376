"""The plugin's Lua scripts, and running scripts by SHA-1 (EVALSHA, then EVAL on NOSCRIPT).

Why Lua for conditional writes and transactions, not WATCH/MULTI: a script runs atomically on
the server in one round trip, on any pooled connection; WATCH/MULTI needs one connection held
across three round trips (WATCH, read, MULTI…EXEC) and a retry loop when another client
touches the key, so contention costs round trips and a lost race is indistinguishable from a
real conflict without another read.

Stored values are ``VERSION + etag (8 bytes) + value`` (see ``layout``): the scripts compare
``string.sub(v, 2, 9)`` with the caller's etag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis

from prism_plugin_redis.resp import Arg, Command, Pool

__all__ = [
    "CAS_DELETE",
    "CAS_SET",
    "GET",
    "PERSIST",
    "PUBLISH",
    "TRANSACT",
    "Script",
    "ScriptCall",
    "Step",
    "run",
]


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def __call__(self, keys: Sequence[Arg], args: Sequence[Arg] = ()) -> ScriptCall:
        return ScriptCall(self, keys, args)


@dataclass(frozen=True)
class ScriptCall:
    script: Script
    keys: Sequence[Arg]
    args: Sequence[Arg]

    def evalsha(self) -> Command:
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    def eval(self) -> Command:
        return ("EVAL", self.script.source, len(self.keys), *self.keys, *self.args)


#: One command of a pipeline: a script call (sent as EVALSHA) or a plain command.
Step = ScriptCall | Command


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


async def run(pool: Pool, steps: Sequence[Step], what: str) -> tuple[list[Any], int]:
    """Run a pipeline in which some commands are script calls, sent as EVALSHA; those the
    server answers NOSCRIPT (its script cache was flushed, or it never saw them) are sent again
    as EVAL, which caches them. Replies in order, and how many were NOSCRIPT (cache misses). A
    NOSCRIPT command did not run, so sending it again is safe."""
    commands = [s.evalsha() if isinstance(s, ScriptCall) else s for s in steps]
    replies = await pool.execute(commands, what)
    missed = [i for i, reply in enumerate(replies) if is_noscript(reply)]
    if missed:
        again: list[Command] = []
        for i in missed:
            step = steps[i]
            assert isinstance(step, ScriptCall)
            again.append(step.eval())
        for i, reply in zip(missed, await pool.execute(again, what), strict=True):
            replies[i] = reply
    return replies, len(missed)


#: The value and remaining TTL of a key, in one atomic step: {value, pttl} or false.
GET = Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
"""
)

#: SET if the stored etag is ARGV[1]: 1 written, 0 etag mismatch, -1 no such key.
#: ARGV[2] the new stored value, ARGV[3] TTL in ms (0 = none).
CAS_SET = Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if string.sub(v, 2, 9) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""
)

#: DEL if the stored etag is ARGV[1]: 1 deleted, 0 etag mismatch, -1 no such key.
CAS_DELETE = Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if string.sub(v, 2, 9) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
)

#: PERSIST that tells whether the key exists (PERSIST alone answers 0 for "no TTL" too).
PERSIST = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PERSIST', KEYS[1])
return 1
"""
)

#: INCR the topic's sequence (KEYS[1]) and PUBLISH "<sequence> <ARGV[2]>" on channel ARGV[1].
PUBLISH = Script(
    """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. ARGV[2])
return seq
"""
)

#: Sets and deletes, all or none. KEYS[i] is operation i's key; ARGV holds 5 values per
#: operation: kind ('s' set, 'd' delete), condition ('' none, 'm' if_match, 'a' if_absent),
#: etag (if_match), stored value (sets), TTL ms (sets; '0' = none). Every condition is checked
#: against the state the earlier operations leave, then everything is applied. Answers
#: {-1, {result per operation}} (a delete's 1/0: whether it removed a key), or
#: {index, reason} for the first failed condition (nothing written).
TRANSACT = Script(
    """
local view = {}
local function current(k)
  local e = view[k]
  if e == nil then
    local v = redis.call('GET', k)
    if v then e = string.sub(v, 2, 9) else e = false end
    view[k] = e
  end
  return e
end
for i = 1, #KEYS do
  local k, b = KEYS[i], (i - 1) * 5
  local cond, cur = ARGV[b + 2], current(KEYS[i])
  if cond == 'a' and cur then return {i - 1, 'the key exists (if_absent)'} end
  if cond == 'm' then
    if not cur then return {i - 1, 'the key does not exist (if_match)'} end
    if cur ~= ARGV[b + 3] then return {i - 1, 'etag mismatch (if_match)'} end
  end
  if ARGV[b + 1] == 's' then view[k] = string.sub(ARGV[b + 4], 2, 9) else view[k] = false end
end
local out = {}
for i = 1, #KEYS do
  local k, b = KEYS[i], (i - 1) * 5
  if ARGV[b + 1] == 's' then
    local ttl = tonumber(ARGV[b + 5])
    if ttl > 0 then
      redis.call('SET', k, ARGV[b + 4], 'PX', ttl)
    else
      redis.call('SET', k, ARGV[b + 4])
    end
    out[i] = 1
  else
    out[i] = redis.call('DEL', k)
  end
end
return {-1, out}
"""
)

ALL = (GET, CAS_SET, CAS_DELETE, PERSIST, PUBLISH, TRANSACT)
