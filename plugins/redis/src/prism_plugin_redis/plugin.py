"""redis: the key-value data model, publish/subscribe and Lua scripts on Redis.

Layout of keys and values: ``layout``. Conditional writes and transactions: Lua scripts
(``scripts``, and why not WATCH/MULTI). The client (pool, errors → statuses): ``resp``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

import betterproto2
import hiredis
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
    ListKeysRequest,
    ListKeysResponse,
    Message,
    PublishRequest,
    PublishResponse,
    SetManyRequest,
    SetManyResponse,
    SetRequest,
    SetResponse,
    SubscribeRequest,
    TransactRequest,
    TransactResponse,
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
    OperationStream,
    Status,
    Unauthenticated,
    Unavailable,
    operation,
    stream_operation,
)
from prism_plugin_redis import scripts
from prism_plugin_redis._proto.prism.plugins.redis.v1 import EvalRequest, EvalResponse, RedisConfig
from prism_plugin_redis.layout import Layout, glob_escape, new_etag, parse_etag
from prism_plugin_redis.pubsub import encode_message, redis_value, subscribe
from prism_plugin_redis.resp import Arg, Command, Endpoint, Pool, check_replies, reply_error
from prism_plugin_redis.resp import invalid_script as script_error

__all__ = ["RedisPlugin"]

DEFAULT_POOL_SIZE = 4
DEFAULT_CONNECT_TIMEOUT_MS = 5000
DEFAULT_COMMAND_TIMEOUT_MS = 10_000
DEFAULT_SCAN_COUNT = 1000
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
HEALTH_TIMEOUT = 2.0  # seconds: a PING slower than this reads DEGRADED


def _non_negative(config: RedisConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise InvalidArgument(f"config field {name!r} must not be negative")


def _remaining(pttl: int) -> int | None:
    return None if pttl < 0 else max(1, pttl)


class RedisPlugin(BackendPlugin):
    name = "redis"
    version = "0.1.0"
    config_type = RedisConfig
    config_required = False  # a local server on the default port

    def __init__(self) -> None:
        super().__init__()
        self._pool: Pool | None = None
        self._layout = Layout("")
        self._scan_count = DEFAULT_SCAN_COUNT
        self._subscriptions: set[trio.CancelScope] = set()
        self._closing = False

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise Unavailable("the redis plugin is not connected")
        return self._pool

    # -- lifetime ------------------------------------------------------------------------------

    async def initialize(
        self, config: RedisConfig, credentials: Mapping[str, str], namespace: str
    ) -> None:
        _non_negative(
            config, "port", "db", "pool_size", "connect_timeout_ms", "command_timeout_ms",
            "scan_count",
        )  # fmt: skip
        if config.port > 65535:
            raise InvalidArgument("config field 'port' must be at most 65535")
        self.kv_limits = KeyValueLimits.from_config(
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            max_batch=config.max_batch,
        )
        password = credentials.get("password", "")
        username = credentials.get("username", "")
        if not config.anonymous and not password:
            raise InvalidArgument(
                "missing required credential 'password' (set config 'anonymous: true' for a "
                "server without authentication)"
            )
        endpoint = Endpoint(
            host=config.host or "127.0.0.1",
            port=config.port or 6379,
            username=username if password else "",
            password=password,
            client_name=config.client_name or "prism",
            db=config.db,
            connect_timeout=(config.connect_timeout_ms or DEFAULT_CONNECT_TIMEOUT_MS) / 1000,
        )
        if any(c.isspace() for c in endpoint.client_name):
            raise InvalidArgument("config field 'client_name' must not contain spaces")
        pool = Pool(
            endpoint,
            config.pool_size or DEFAULT_POOL_SIZE,
            (config.command_timeout_ms or DEFAULT_COMMAND_TIMEOUT_MS) / 1000,
        )
        self._layout = Layout(config.key_prefix)
        self._scan_count = config.scan_count or DEFAULT_SCAN_COUNT
        try:
            await pool.fill()  # every connection authenticated now: bad credentials fail here
            loads: list[Command] = [("SCRIPT", "LOAD", s.source) for s in scripts.ALL]
            check_replies(await pool.execute(loads, "loading the scripts"), "SCRIPT LOAD")
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self._update_gauge()

    def _update_gauge(self) -> None:
        pool = self._pool
        self.metrics.connections_active = (
            0 if pool is None else pool.open_connections + pool.extra_connections
        )

    async def health(self) -> HealthReport:
        """HEALTHY when PING is answered; DEGRADED when Redis cannot be reached or is slow
        (calls fail with UNAVAILABLE / DEADLINE_EXCEEDED meanwhile, and the pool reconnects by
        itself once it is back: a restart would not help); UNHEALTHY when Redis refuses the
        credentials (they were rotated or revoked: a new Initialize must bring new ones)."""
        pool = self.pool
        details = {
            "server": pool.endpoint.address,
            "pool_size": str(pool.size),
            "connections": str(pool.open_connections),
            "subscriptions": str(pool.extra_connections),
        }
        try:
            with trio.fail_after(HEALTH_TIMEOUT):
                await pool.call("PING")
        except trio.TooSlowError:
            return HealthReport(
                HealthStatus.DEGRADED, f"Redis did not answer PING within {HEALTH_TIMEOUT:g} s",
                details,
            )  # fmt: skip
        except Unauthenticated as exc:
            return HealthReport(HealthStatus.UNHEALTHY, exc.message, details)
        except GrpcError as exc:
            return HealthReport(HealthStatus.DEGRADED, exc.message, details)
        finally:
            self._update_gauge()
        return HealthReport(details=details)

    def begin_shutdown(self) -> None:
        # Subscriptions never end on their own: end them now (UNAVAILABLE, so clients
        # resubscribe to the next instance) instead of holding the drain for the grace period.
        self._closing = True
        for scope in self._subscriptions:
            scope.cancel()

    async def shutdown(self, grace_seconds: float) -> None:
        if self._pool is not None:
            self._pool.close()
            self._update_gauge()

    # -- helpers -------------------------------------------------------------------------------

    async def _run(self, what: str, *commands: Command) -> list[Any]:
        try:
            return await self.pool.execute(commands, what)
        finally:
            self._update_gauge()

    async def _script(self, what: str, *steps: scripts.Step) -> list[Any]:
        try:
            replies, _ = await scripts.run(self.pool, steps, what)
            return replies
        finally:
            self._update_gauge()

    def _set_command(self, item: SetRequest, etag: bytes) -> scripts.Step:
        key = self._layout.key(item.key)
        stored = Layout.pack(etag, item.value)
        if item.if_match:
            expected = parse_etag(item.if_match) or b"-"  # matches no stored etag
            return scripts.CAS_SET([key], [expected, stored, item.ttl_ms])
        command: list[Arg] = ["SET", key, stored]
        if item.ttl_ms:
            command += ["PX", item.ttl_ms]
        if item.if_absent:
            command.append("NX")
        return tuple(command)

    def _delete_command(self, item: DeleteRequest) -> scripts.Step:
        key = self._layout.key(item.key)
        if item.if_match:
            return scripts.CAS_DELETE([key], [parse_etag(item.if_match) or b"-"])
        return ("DEL", key)

    @staticmethod
    def _set_outcome(item: SetRequest, reply: Any) -> str | None:
        """Why a set did not write (None: it did)."""
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply, "set")
        if item.if_match:
            return {1: None, 0: "etag mismatch (if_match)"}.get(
                reply, "the key does not exist (if_match)"
            )
        if reply is None:
            return "the key exists (if_absent)"
        return None

    @staticmethod
    def _delete_outcome(item: DeleteRequest, reply: Any) -> tuple[str | None, bool]:
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply, "delete")
        if item.if_match:
            if reply == 1:
                return None, True
            return ("etag mismatch (if_match)" if reply == 0 else "the key does not exist "
                    "(if_match)"), False  # fmt: skip
        return None, bool(reply)

    def _response(self, key: str, stored: bytes | None, pttl: int | None = None) -> GetResponse:
        # Positional: get_many builds one per key, and keywords cost more per message.
        if stored is None:
            return GetResponse()
        value, etag = Layout.unpack(stored, key)
        return GetResponse(True, value, etag, None if pttl is None else _remaining(pttl))

    # -- key-value -----------------------------------------------------------------------------
    # The SDK has checked keys, values, shapes and features before a handler runs.

    @operation("get", params=GetRequest, result=GetResponse, features=("etag", "ttl"))
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        key = self._layout.key(params.key)
        (reply,) = await self._script("get", scripts.GET([key]))
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply, "get")
        if reply is None:
            return GetResponse(found=False)
        return self._response(params.key, reply[0], reply[1])

    @operation("set", params=SetRequest, result=SetResponse, features=("etag", "ttl"))
    async def set(self, params: SetRequest, ctx: OperationContext) -> SetResponse:
        etag = new_etag()
        (reply,) = await self._script("set", self._set_command(params, etag))
        reason = self._set_outcome(params, reply)
        if reason is not None:
            raise Aborted(f"key {params.key!r}: {reason}; nothing was written")
        return SetResponse(etag=etag.hex())

    @operation("delete", params=DeleteRequest, result=DeleteResponse, features=("etag",))
    async def delete(self, params: DeleteRequest, ctx: OperationContext) -> DeleteResponse:
        (reply,) = await self._script("delete", self._delete_command(params))
        reason, deleted = self._delete_outcome(params, reply)
        if reason is not None:
            raise Aborted(f"key {params.key!r}: {reason}; nothing was deleted")
        return DeleteResponse(deleted=deleted)

    @operation("exists", params=ExistsRequest, result=ExistsResponse)
    async def exists(self, params: ExistsRequest, ctx: OperationContext) -> ExistsResponse:
        (reply,) = check_replies(
            await self._run("exists", ("EXISTS", self._layout.key(params.key))), "exists"
        )
        return ExistsResponse(exists=bool(reply))

    @operation("expire", params=ExpireRequest, result=ExpireResponse)
    async def expire(self, params: ExpireRequest, ctx: OperationContext) -> ExpireResponse:
        key = self._layout.key(params.key)
        if params.persist:
            (reply,) = await self._script("expire", scripts.PERSIST([key]))
        else:
            (reply,) = await self._run("expire", ("PEXPIRE", key, params.ttl_ms))
        check_replies([reply], "expire")
        return ExpireResponse(found=bool(reply))

    @operation("list_keys", params=ListKeysRequest, result=ListKeysResponse)
    async def list_keys(self, params: ListKeysRequest, ctx: OperationContext) -> ListKeysResponse:
        """SCAN with MATCH over the whole key space of the prefix, for every page: Redis keeps
        no ordered index, so a page costs a scan of every key matching the prefix. Only the
        page (``limit`` + 1 keys) is held in memory."""
        limit = min(params.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        pattern = glob_escape(self._layout.key(params.prefix)) + b"*"
        after = params.start_after.encode()
        page: list[bytes] = []  # a max-heap (negated through sorting): the smallest keys seen
        seen: set[bytes] = set()  # SCAN may return a key twice
        cursor = b"0"
        while True:
            (reply,) = check_replies(
                await self._run(
                    "list_keys", ("SCAN", cursor, "MATCH", pattern, "COUNT", self._scan_count)
                ),
                "list_keys",
            )
            cursor, found = reply
            for stored in found:
                key = self._layout.user_key(stored)
                if key is None:
                    continue
                encoded = key.encode()
                if encoded <= after or encoded in seen:
                    continue
                seen.add(encoded)
                page.append(encoded)
            if len(page) > 4 * (limit + 1):  # keep memory bounded by the page size
                page = heapq.nsmallest(limit + 1, page)
                seen = set(page)
            if cursor == b"0":
                break
        page = heapq.nsmallest(limit + 1, page)
        return ListKeysResponse(
            keys=[k.decode() for k in page[:limit]], truncated=len(page) > limit
        )

    @operation("get_many", params=GetManyRequest, result=GetManyResponse, features=("etag",))
    async def get_many(self, params: GetManyRequest, ctx: OperationContext) -> GetManyResponse:
        """One MGET for all the keys (no TTLs: ``get`` reports those)."""
        keys = params.keys
        if not keys:
            return GetManyResponse()
        layout_key = self._layout.key
        (reply,) = check_replies(
            await self._run("get_many", ("MGET", *[layout_key(k) for k in keys])), "get_many"
        )
        response = self._response
        return GetManyResponse(items=[response(k, v) for k, v in zip(keys, reply, strict=True)])

    @operation("set_many", params=SetManyRequest, result=SetManyResponse, features=("etag", "ttl"))
    async def set_many(self, params: SetManyRequest, ctx: OperationContext) -> SetManyResponse:
        """One pipeline: SET (NX) per item, the CAS script for items with if_match."""
        if not params.items:
            return SetManyResponse()
        etags = [new_etag() for _ in params.items]
        replies = await self._script(
            "set_many", *(self._set_command(i, e) for i, e in zip(params.items, etags, strict=True))
        )
        results = []
        for item, etag, reply in zip(params.items, etags, replies, strict=True):
            reason = self._set_outcome(item, reply)
            if reason is None:
                results.append(ItemResult(etag=etag.hex()))
            else:
                results.append(ItemResult(code=Status.ABORTED, message=f"key {item.key!r}: "
                                          f"{reason}; nothing was written"))  # fmt: skip
        return SetManyResponse(results=results)

    @operation(
        "delete_many", params=DeleteManyRequest, result=DeleteManyResponse, features=("etag",)
    )
    async def delete_many(
        self, params: DeleteManyRequest, ctx: OperationContext
    ) -> DeleteManyResponse:
        if not params.items:
            return DeleteManyResponse()
        replies = await self._script(
            "delete_many", *(self._delete_command(i) for i in params.items)
        )
        results = []
        for item, reply in zip(params.items, replies, strict=True):
            reason, deleted = self._delete_outcome(item, reply)
            if reason is None:
                results.append(ItemResult(deleted=deleted))
            else:
                results.append(ItemResult(code=Status.ABORTED, message=f"key {item.key!r}: "
                                          f"{reason}; nothing was deleted"))  # fmt: skip
        return DeleteManyResponse(results=results)

    @operation(
        "transact", params=TransactRequest, result=TransactResponse, features=("etag", "ttl")
    )
    async def transact(self, params: TransactRequest, ctx: OperationContext) -> TransactResponse:
        """One script (scripts.TRANSACT): Redis runs it atomically, so all operations apply or
        none, and no other client sees a part."""
        if not params.operations:
            return TransactResponse()
        keys: list[Arg] = []
        args: list[Arg] = []
        etags: list[bytes | None] = []
        for op in params.operations:
            kind, item = betterproto2.which_one_of(op, "operation")
            if kind == "set":
                assert isinstance(item, SetRequest)
                etag = new_etag()
                condition = "m" if item.if_match else ("a" if item.if_absent else "")
                expected = (parse_etag(item.if_match) or b"-") if item.if_match else b""
                args += ["s", condition, expected, Layout.pack(etag, item.value), item.ttl_ms]
                etags.append(etag)
                keys.append(self._layout.key(item.key))
            else:
                assert isinstance(item, DeleteRequest)  # the SDK checked the shape
                remove = item
                expected = (parse_etag(remove.if_match) or b"-") if remove.if_match else b""
                args += ["d", "m" if remove.if_match else "", expected, b"", 0]
                etags.append(None)
                keys.append(self._layout.key(remove.key))
        (reply,) = await self._script("transact", scripts.TRANSACT(keys, args))
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply, "transact")
        index, outcome = reply
        if index >= 0:
            kind, item = betterproto2.which_one_of(params.operations[index], "operation")
            key = item.key  # type: ignore[union-attr]
            raise Aborted(f"operation {index} ({kind} {key!r}): {outcome.decode()}; "
                          "nothing was written")  # fmt: skip
        return TransactResponse(
            results=[
                ItemResult(etag=etag.hex()) if etag is not None else ItemResult(deleted=bool(r))
                for etag, r in zip(etags, outcome, strict=True)
            ]
        )

    # -- publish / subscribe -------------------------------------------------------------------

    @operation("publish", params=PublishRequest, result=PublishResponse)
    async def publish(self, params: PublishRequest, ctx: OperationContext) -> PublishResponse:
        if not params.topic:
            raise InvalidArgument("topic must not be empty")
        self.kv_limits.check_text(params.topic, "topic")
        self.kv_limits.check_value(params.payload, "payload")
        body = encode_message(params.payload, dict(params.headers))
        (reply,) = await self._script(
            "publish",
            scripts.PUBLISH(
                [self._layout.sequence_key(params.topic)],
                [self._layout.channel(params.topic), body],
            ),
        )
        check_replies([reply], "publish")
        return PublishResponse(sequence=int(reply))

    @stream_operation("subscribe", params=SubscribeRequest, result=Message)
    async def subscribe(self, params: SubscribeRequest, stream: OperationStream) -> None:
        if not params.topic:
            raise InvalidArgument("topic must not be empty")
        self.kv_limits.check_text(params.topic, "topic")
        if self._closing:
            raise Unavailable("the redis plugin is shutting down")
        with trio.CancelScope() as scope:
            self._subscriptions.add(scope)
            try:
                self._update_gauge()
                await subscribe(
                    self.pool, self._layout.channel(params.topic), params.topic, stream.send
                )
            finally:
                self._subscriptions.discard(scope)
                self._update_gauge()
        raise Unavailable("the redis plugin is shutting down")

    # -- scripts -------------------------------------------------------------------------------

    @operation("eval", params=EvalRequest, result=EvalResponse)
    async def eval(self, params: EvalRequest, ctx: OperationContext) -> EvalResponse:
        """EVALSHA first; on NOSCRIPT, EVAL (which caches it). Cache hits and misses are the
        plugin's cache counters."""
        if not params.script:
            raise InvalidArgument("script must not be empty")
        self.kv_limits.check_value(params.script.encode(), "script")
        for index, key in enumerate(params.keys):
            self.kv_limits.check_key(key, f"keys[{index}]")
        for index, arg in enumerate(params.args):
            self.kv_limits.check_value(arg, f"args[{index}]")
        script = scripts.Script(params.script)
        keys: list[Arg] = [self._layout.key(k) for k in params.keys]
        try:
            replies, misses = await scripts.run(
                self.pool, [script(keys, list(params.args))], "eval"
            )
        finally:
            self._update_gauge()
        if misses:
            ctx.cache_miss()
        else:
            ctx.cache_hit()
        (reply,) = replies
        if isinstance(reply, hiredis.ReplyError):
            raise script_error(reply)
        return EvalResponse(result=redis_value(reply))
