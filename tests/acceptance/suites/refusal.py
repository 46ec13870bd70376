"""refusal: what a plugin does not claim must be refused, never half-served. For each
data-model operation a target lacks, calling it is UNIMPLEMENTED; for each optional feature an
operation it has does not declare, a request using that feature is UNIMPLEMENTED and writes
nothing (Dapr's "feature not present" checks, made behavioural). Built per target from its
capabilities, so the suite follows the declarations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import betterproto2
from kit import RESULTS, Check, Ctx, expect_status

from prism._proto.prism.data.v1 import (
    ConsumeRequest,
    DeleteManyRequest,
    DeleteObjectRequest,
    DeleteRequest,
    ExecuteStatementRequest,
    ExistsRequest,
    ExpireRequest,
    GetManyRequest,
    GetObjectRequest,
    GetRequest,
    HeadObjectRequest,
    ListKeysRequest,
    ListObjectsRequest,
    ProduceRequest,
    PublishRequest,
    PutObjectRequest,
    QueryRequest,
    Row,
    SetManyRequest,
    SetRequest,
    SubscribeRequest,
    TransactionRequest,
    TransactOperation,
    TransactRequest,
)
from prism.grpc.wire.status import Status

Build = Callable[[Ctx], betterproto2.Message]

SAMPLES: dict[str, Build] = {
    "get": lambda ctx: GetRequest(key=ctx.key()),
    "set": lambda ctx: SetRequest(key=ctx.key(), value=b"1"),
    "delete": lambda ctx: DeleteRequest(key=ctx.key()),
    "exists": lambda ctx: ExistsRequest(key=ctx.key()),
    "expire": lambda ctx: ExpireRequest(key=ctx.key(), ttl_ms=1000),
    "list_keys": lambda ctx: ListKeysRequest(prefix=ctx.key()),
    "get_many": lambda ctx: GetManyRequest(keys=[ctx.key()]),
    "set_many": lambda ctx: SetManyRequest(items=[SetRequest(key=ctx.key(), value=b"1")]),
    "delete_many": lambda ctx: DeleteManyRequest(items=[DeleteRequest(key=ctx.key())]),
    "transact": lambda ctx: TransactRequest(
        operations=[TransactOperation(set=SetRequest(key=ctx.key(), value=b"1"))]
    ),
    "publish": lambda ctx: PublishRequest(topic=ctx.key(), payload=b"1"),
    "produce": lambda ctx: ProduceRequest(topic=ctx.key(), value=b"1"),
    "query": lambda ctx: QueryRequest(sql="SELECT 1"),
    "execute": lambda ctx: ExecuteStatementRequest(sql="SELECT 1"),
    "transaction": lambda ctx: TransactionRequest(),
    "head_object": lambda ctx: HeadObjectRequest(key=ctx.key()),
    "list_objects": lambda ctx: ListObjectsRequest(prefix=ctx.key()),
    "delete_object": lambda ctx: DeleteObjectRequest(key=ctx.key()),
}
assert set(SAMPLES) == set(RESULTS)
STREAM_SAMPLES: dict[str, Build] = {
    "subscribe": lambda ctx: SubscribeRequest(topic=ctx.key()),
    "consume": lambda ctx: ConsumeRequest(topic=ctx.key(), group="refused"),
    "put_object": lambda ctx: PutObjectRequest(key=ctx.key()),
    "get_object": lambda ctx: GetObjectRequest(key=ctx.key()),
}

LONG = 600_000


def _set(**fields: object) -> Build:
    return lambda ctx: SetRequest(key=ctx.key(), value=b"1", **fields)  # type: ignore[arg-type]


#: (operation, feature, what the request uses, the request)
FEATURE_PROBES: list[tuple[str, str, str, Build]] = [
    (
        "execute",
        "batch",
        "batch",
        lambda ctx: ExecuteStatementRequest(sql="SELECT 1", batch=[Row(), Row()]),
    ),
    ("set", "etag", "if_match", _set(if_match="e")),
    ("set", "etag", "if_absent", _set(if_absent=True)),
    ("set", "ttl", "ttl_ms", _set(ttl_ms=LONG)),
    ("delete", "etag", "if_match", lambda ctx: DeleteRequest(key=ctx.key(), if_match="e")),
    (
        "set_many",
        "etag",
        "if_absent",
        lambda ctx: SetManyRequest(items=[_set(if_absent=True)(ctx)]),  # type: ignore[list-item]
    ),
    (
        "set_many",
        "ttl",
        "ttl_ms",
        lambda ctx: SetManyRequest(items=[_set(ttl_ms=LONG)(ctx)]),  # type: ignore[list-item]
    ),
    (
        "delete_many",
        "etag",
        "if_match",
        lambda ctx: DeleteManyRequest(items=[DeleteRequest(key=ctx.key(), if_match="e")]),
    ),
    (
        "transact",
        "etag",
        "if_absent",
        lambda ctx: TransactRequest(
            operations=[TransactOperation(set=_set(if_absent=True)(ctx))]  # type: ignore[arg-type]
        ),
    ),
    (
        "transact",
        "ttl",
        "ttl_ms",
        lambda ctx: TransactRequest(
            operations=[TransactOperation(set=_set(ttl_ms=LONG)(ctx))]  # type: ignore[arg-type]
        ),
    ),
]


def _unimplemented(operation: str) -> Callable[[Ctx], Awaitable[None]]:
    async def run(ctx: Ctx) -> None:
        with expect_status(Status.UNIMPLEMENTED):
            await ctx.call(operation, SAMPLES[operation](ctx))
        if "get" in ctx.capabilities:
            assert await ctx.stored(ctx.key()) is None

    return run


def _stream_unimplemented(operation: str) -> Callable[[Ctx], Awaitable[None]]:
    async def run(ctx: Ctx) -> None:
        with expect_status(Status.UNIMPLEMENTED):
            async with ctx.client.stream(operation, STREAM_SAMPLES[operation](ctx)) as stream:
                await stream.receive()

    return run


def _feature_refused(operation: str, build: Build) -> Callable[[Ctx], Awaitable[None]]:
    async def run(ctx: Ctx) -> None:
        if operation == "delete" and "set" in ctx.capabilities:
            await ctx.call("set", SetRequest(key=ctx.key(), value=b"kept"))
        with expect_status(Status.UNIMPLEMENTED):
            await ctx.call(operation, build(ctx))
        if "get" in ctx.capabilities:
            expected = b"kept" if operation == "delete" and "set" in ctx.capabilities else None
            assert await ctx.stored(ctx.key()) == expected

    return run


def refusal_checks(capabilities: frozenset[str]) -> list[Check]:
    checks: list[Check] = []
    for operation in [*SAMPLES, *STREAM_SAMPLES]:
        if operation in capabilities:
            continue
        func = (
            _stream_unimplemented(operation)
            if operation in STREAM_SAMPLES
            else _unimplemented(operation)
        )
        checks.append(
            Check("refusal", f"{operation}_is_unimplemented", func, frozenset(), "undeclared")
        )
    for operation, feature, field, build in FEATURE_PROBES:
        if operation in capabilities and f"{operation}:{feature}" not in capabilities:
            checks.append(
                Check(
                    "refusal",
                    f"{operation}_without_{feature}_refuses_{field}",
                    _feature_refused(operation, build),
                    frozenset(),
                    f"{operation} does not declare {feature!r}",
                )
            )
    return checks
