"""memcached: get, set with expiry, delete, exists, expire and the bulk operations, with etags
from memcached's CAS values, over the meta protocol.

What it declares is what memcached can do: ``kv.basic``, ``kv.etag``, ``kv.bulk`` and
``kv.ttl`` (with the remaining TTL, in memcached's whole seconds). Not ``list_keys`` (memcached
cannot enumerate keys), not ``transact`` (it has no multi-key atomicity), not pub/sub: those
are refused with UNIMPLEMENTED by the SDK, and the acceptance suites' refusal checks prove it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import trio

from prism._proto.prism.data.v1 import (
    DeleteManyRequest,
    DeleteManyResponse,
    DeleteRequest,
    DeleteResponse,
    ExistsRequest,
    ExistsResponse,
    ExpireRequest,
    ExpireResponse,
    GetManyRequest,
    GetManyResponse,
    GetRequest,
    GetResponse,
    ItemResult,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
)
from prism.sdk import (
    Aborted,
    BackendPlugin,
    GrpcError,
    HealthReport,
    HealthStatus,
    InvalidArgument,
    KeyValueLimits,
    OperationContext,
    Status,
    Unavailable,
    operation,
)
from prism_plugin_memcached._proto.prism.plugins.memcached.v1 import MemcachedConfig
from prism_plugin_memcached.client import Endpoint, Pool, reply_error
from prism_plugin_memcached.meta import MAX_KEY_BYTES, Reply, command, get_commands

__all__ = ["MemcachedPlugin"]

DEFAULT_POOL_SIZE = 4
DEFAULT_CONNECT_TIMEOUT_MS = 5000
DEFAULT_COMMAND_TIMEOUT_MS = 10_000
DEFAULT_MAX_VALUE_BYTES = (1 << 20) - 1024
#: memcached reads an expiry over 30 days as a Unix time, not a number of seconds.
RELATIVE_EXPIRY_LIMIT = 30 * 24 * 3600
HEALTH_TIMEOUT = 2.0

_SET_FAILURES = {
    b"NS": "the key exists (if_absent)",
    b"EX": "etag mismatch (if_match)",
    b"NF": "the key does not exist (if_match)",
}


class MemcachedPlugin(BackendPlugin):
    name = "memcached"
    version = "0.1.0"
    config_type = MemcachedConfig
    config_required = False  # a local server on the default port

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._pool: Pool | None = None
        self._prefix = b""

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise Unavailable("the memcached plugin is not connected")
        return self._pool

    async def initialize(
        self, config: MemcachedConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        for field in ("port", "pool_size", "connect_timeout_ms", "command_timeout_ms"):
            if getattr(config, field) < 0:
                raise InvalidArgument(f"config field {field!r} must not be negative")
        if config.port > 65535:
            raise InvalidArgument("config field 'port' must be at most 65535")
        self._prefix = config.key_prefix.encode()
        room = MAX_KEY_BYTES - len(self._prefix)
        if room < 1:
            raise InvalidArgument(f"config field 'key_prefix' is {MAX_KEY_BYTES} bytes or more")
        if config.max_key_bytes > room:
            raise InvalidArgument(
                f"config field 'max_key_bytes' is over memcached's limit: {room} bytes with this "
                "key_prefix"
            )
        self.kv_limits = KeyValueLimits.from_config(
            max_key_bytes=config.max_key_bytes or room,
            max_value_bytes=config.max_value_bytes or DEFAULT_MAX_VALUE_BYTES,
            max_batch=config.max_batch,
        )
        pool = Pool(
            Endpoint(
                config.host or "127.0.0.1",
                config.port or 11211,
                (config.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS) / 1000,
            ),
            config.pool_size or DEFAULT_POOL_SIZE,
            (config.command_timeout_ms or DEFAULT_COMMAND_TIMEOUT_MS) / 1000,
        )
        try:
            await pool.fill()
            (reply,) = await pool.execute(b"mn\r\n", 1, "connecting")
            if reply.code != b"MN":
                raise Unavailable(
                    f"memcached at {pool.endpoint.address} does not speak the meta protocol "
                    "(memcached 1.6 or later is needed)"
                )
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self.metrics.connections_active = pool.open_connections

    async def health(self) -> HealthReport:
        """HEALTHY when memcached answers a no-op; DEGRADED when it cannot be reached or is
        slow (calls fail with UNAVAILABLE / DEADLINE_EXCEEDED meanwhile, and the pool
        reconnects by itself once it is back, so a restart would not help)."""
        pool = self.pool
        details = {
            "server": pool.endpoint.address,
            "pool_size": str(pool.size),
            "connections": str(pool.open_connections),
        }
        try:
            with trio.fail_after(HEALTH_TIMEOUT):
                await pool.execute(b"mn\r\n", 1, "health check")
        except trio.TooSlowError:
            return HealthReport(
                HealthStatus.DEGRADED,
                f"memcached did not answer within {HEALTH_TIMEOUT:g} s",
                details,
            )
        except GrpcError as exc:
            return HealthReport(HealthStatus.DEGRADED, exc.message, details)
        finally:
            self.metrics.connections_active = pool.open_connections
        return HealthReport(details=details)

    async def shutdown(self, grace_seconds: float) -> None:
        if self._pool is not None:
            self._pool.close()
            self.metrics.connections_active = 0

    # -- commands ------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _expiry(self, ttl_ms: int) -> int:
        """memcached's exptime for a TTL: whole seconds, rounded up (memcached's clock ticks
        once a second), as a Unix time past 30 days. memcached's clock lags the real one by
        up to a second, so an absolute time is taken a second early: such a key may expire up
        to 1 s before its 30-odd days, never after, and never reports more TTL than it got."""
        seconds = math.ceil(ttl_ms / 1000)
        if seconds > RELATIVE_EXPIRY_LIMIT:
            return int(self._clock()) + seconds - 1
        return seconds

    def _set(self, item: SetRequest) -> bytes | None:
        """The ``ms`` command for ``item``; None when its if_match cannot be a CAS value (no
        stored value can match it)."""
        flags = [b"c"]
        if item.ttl_ms:
            flags.append(b"T%d" % self._expiry(item.ttl_ms))
        if item.if_match:
            if not item.if_match.isdigit():
                return None
            flags.append(b"C" + item.if_match.encode())
        if item.if_absent:
            flags.append(b"ME")  # mode "add": store only if absent
        return command(b"ms", self._key(item.key), flags, item.value)

    def _delete(self, item: DeleteRequest) -> bytes | None:
        flags = []
        if item.if_match:
            if not item.if_match.isdigit():
                return None
            flags.append(b"C" + item.if_match.encode())
        return command(b"md", self._key(item.key), flags)

    async def _execute(
        self, commands: list[bytes], what: str, replies: int | None = None
    ) -> list[Reply]:
        """``replies``: how many the commands get (default: one each)."""
        count = len(commands) if replies is None else replies
        try:
            return await self.pool.execute(b"".join(commands), count, what)
        finally:
            self.metrics.connections_active = self.pool.open_connections

    async def _execute_some(self, commands: list[bytes | None], what: str) -> list[Reply | None]:
        """Run the commands that are not None; None stays None (a condition that cannot hold)."""
        sent = [c for c in commands if c is not None]
        replies = iter(await self._execute(sent, what) if sent else [])
        return [None if c is None else next(replies) for c in commands]

    @staticmethod
    def _get_response(reply: Reply, what: str) -> GetResponse:
        # Positional: get_many builds one per key, and keywords cost more per message.
        code = reply.code
        if code == b"VA":
            ttl = reply.int_flag("t")
            remaining = None if ttl is None or ttl < 0 else max(1, ttl * 1000)
            return GetResponse(True, reply.value or b"", reply.flags["c"].decode(), remaining)
        if code == b"EN":
            return GetResponse()
        raise reply_error(reply, what)

    @staticmethod
    def _set_failure(reply: Reply | None) -> str | None:
        if reply is None:
            return "etag mismatch (if_match)"
        if reply.code == b"HD":
            return None
        if reply.error:
            raise reply_error(reply, "set")
        return _SET_FAILURES.get(reply.code, reply.line.decode(errors="replace"))

    @staticmethod
    def _delete_outcome(item: DeleteRequest, reply: Reply | None) -> tuple[str | None, bool]:
        if reply is None:
            return "etag mismatch (if_match)", False
        if reply.error:
            raise reply_error(reply, "delete")
        if reply.code == b"HD":
            return None, True
        if reply.code == b"EX":
            return "etag mismatch (if_match)", False
        if item.if_match:
            return "the key does not exist (if_match)", False
        return None, False

    @staticmethod
    def _count(ctx: OperationContext, found: bool) -> None:
        if found:
            ctx.cache_hit()
        else:
            ctx.cache_miss()

    # -- operations ----------------------------------------------------------------------------
    # The SDK has checked keys, values, shapes and features before a handler runs.

    @operation("get", params=GetRequest, result=GetResponse, features=("etag", "ttl"))
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        (reply,) = await self._execute(
            [command(b"mg", self._key(params.key), [b"v", b"c", b"t"])], "get"
        )
        result = self._get_response(reply, "get")
        self._count(ctx, result.found)
        return result

    @operation("set", params=SetRequest, result=SetResponse, features=("etag", "ttl"))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        (reply,) = await self._execute_some([self._set(params)], "set")
        reason = self._set_failure(reply)
        if reason is not None:
            raise Aborted(f"key {params.key!r}: {reason}; nothing was written")
        assert reply is not None
        return SetResponse(etag=reply.flags["c"].decode())

    @operation("delete", params=DeleteRequest, result=DeleteResponse, features=("etag",))
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        (reply,) = await self._execute_some([self._delete(params)], "delete")
        reason, deleted = self._delete_outcome(params, reply)
        if reason is not None:
            raise Aborted(f"key {params.key!r}: {reason}; nothing was deleted")
        return DeleteResponse(deleted=deleted)

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        (reply,) = await self._execute([command(b"mg", self._key(params.key), [])], "exists")
        if reply.error:
            raise reply_error(reply, "exists")
        return ExistsResponse(exists=reply.code == b"HD")

    @operation("expire", params=ExpireRequest, result=ExpireResponse)
    async def expire(self, params: ExpireRequest, ctx: OperationContext) -> ExpireResponse:
        """A touch (``mg <key> T<exptime>``): the value and its CAS (etag) stay; T0 = never."""
        exptime = 0 if params.persist else self._expiry(params.ttl_ms)
        (reply,) = await self._execute(
            [command(b"mg", self._key(params.key), [b"T%d" % exptime])], "expire"
        )
        if reply.error:
            raise reply_error(reply, "expire")
        return ExpireResponse(found=reply.code == b"HD")

    @operation("get_many", params=GetManyRequest, result=GetManyResponse, features=("etag", "ttl"))
    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        """One pipeline of ``mg`` commands, answered in order."""
        keys = params.keys
        if not keys:
            return GetManyResponse()
        key = self._key
        pipeline = get_commands([key(k) for k in keys], b" v c t")
        replies = await self._execute([pipeline], "get_many", len(keys))
        response = self._get_response
        items = [response(r, "get_many") for r in replies]
        hits = sum([r.code == b"VA" for r in replies])
        ctx.cache_hit(hits)
        ctx.cache_miss(len(items) - hits)
        return GetManyResponse(items=items)

    @operation("set_many", params=SetManyRequest, result=SetManyResponse, features=("etag", "ttl"))
    async def set_many(self, params: SetManyRequest, ctx: OperationContext) -> SetManyResponse:
        if not params.items:
            return SetManyResponse()
        replies = await self._execute_some([self._set(i) for i in params.items], "set_many")
        results = []
        for item, reply in zip(params.items, replies, strict=True):
            reason = self._set_failure(reply)
            if reason is None:
                assert reply is not None
                results.append(ItemResult(etag=reply.flags["c"].decode()))
            else:
                message = f"key {item.key!r}: {reason}; nothing was written"
                results.append(ItemResult(code=Status.ABORTED, message=message))
        return SetManyResponse(results=results)

    @operation(
        "delete_many", params=DeleteManyRequest, result=DeleteManyResponse, features=("etag",)
    )
    async def delete_many(
        self, params: DeleteManyRequest, ctx: OperationContext
    ) -> DeleteManyResponse:
        if not params.items:
            return DeleteManyResponse()
        replies = await self._execute_some([self._delete(i) for i in params.items], "delete_many")
        results = []
        for item, reply in zip(params.items, replies, strict=True):
            reason, deleted = self._delete_outcome(item, reply)
            if reason is None:
                results.append(ItemResult(deleted=deleted))
            else:
                message = f"key {item.key!r}: {reason}; nothing was deleted"
                results.append(ItemResult(code=Status.ABORTED, message=message))
        return DeleteManyResponse(results=results)
