"""Authorization over a real front door: a proxy on a real socket with the memstore plugin,
called over gRPC. Anonymous callers are refused unless a namespace admits them; each rule
condition (subject, SANs, claims, scopes, operation globs) with a caller that matches and one
that does not; refusals name the namespace and operation only, and are counted.

Identities with credentials come from ``authz_testkit.HeaderIdentity``, a stand-in for the
authentication stage (prism/proxy/authn.py, built separately): it reads the identity the
test wants from a metadata entry, so each rule can be checked with any identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest
import trio
from authz_testkit import ns, proxy, who
from host_testkit import Running
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prism import grpc as pg
from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse, StreamRequest
from prism.config import NamespaceConfig, PluginConfig
from prism.config.auth import AccessRule
from prism.grpc.wire.status import PermissionDenied
from prism.sdk.typed import pack


async def call(
    running: Running, namespace: str, operation: str, metadata: Sequence[tuple[str, str]] = ()
) -> ExecuteResponse:
    params: Any = GetRequest(key="k") if operation != "set" else SetRequest(key="k", value=b"v")
    request = ExecuteRequest(namespace=namespace, operation=operation, typed_params=pack(params))
    response: ExecuteResponse = await running.channel.unary_unary(
        "/prism.proxy.v1.DataProxy/Execute", request, ExecuteResponse, metadata=metadata
    )
    return response


async def denied(running: Running, namespace: str, operation: str, **identity: Any) -> str:
    metadata = who(**identity) if identity else []
    with pytest.raises(PermissionDenied) as info:
        await call(running, namespace, operation, metadata)
    return info.value.message


def denials(running: Running) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(
        generate_latest(running.proxy.metrics.registry).decode()
    ):
        for sample in family.samples:
            if sample.name == "prism_authorization_denied_total":
                counts[sample.labels["namespace"]] = sample.value
    return counts


async def test_authorizer_refuses_anonymous_callers_by_default() -> None:
    async with proxy(ns("closed"), ns("open", anonymous=True)) as running:
        message = await denied(running, "closed", "get")
        assert message == "caller may not call 'get' on namespace 'closed'"
        await call(running, "open", "set")  # admitted: anonymous: true
        await call(running, "closed", "get", who("alice"))  # any authenticated caller
        assert denials(running) == {"closed": 1.0, "open": 0.0}


async def test_authorizer_rules_restrict_operations_by_glob() -> None:
    rules = [{"operations": ["get", "list_*"]}]
    async with proxy(ns("kv", rules=rules)) as running:
        await call(running, "kv", "get", who("alice"))
        with pytest.raises(pg.GrpcError) as info:  # allowed: the plugin answers for itself
            await call(running, "kv", "list_keys", who("alice"))
        assert info.value.status != pg.Status.PERMISSION_DENIED
        message = await denied(running, "kv", "set", subject="alice")
        assert message == "caller may not call 'set' on namespace 'kv'"
        assert "list_" not in message  # never the rule
        # A rule without identity conditions still needs an admitted caller.
        await denied(running, "kv", "get")


async def test_authorizer_subject_glob() -> None:
    rules = [{"subject": "spiffe://example.org/payments/*", "operations": ["*"]}]
    async with proxy(ns("kv", rules=rules)) as running:
        await call(running, "kv", "set", who("spiffe://example.org/payments/api"))
        await denied(running, "kv", "set", subject="spiffe://example.org/search/api")
        await denied(running, "kv", "set", subject="SPIFFE://example.org/payments/api")


async def test_authorizer_san_globs_with_and_without_kind() -> None:
    rules = [
        {"sans": ["URI:spiffe://example.org/*"], "operations": ["get"]},
        {"sans": ["*.billing.internal"], "operations": ["set"]},
    ]
    async with proxy(ns("kv", rules=rules)) as running:
        uri = [("URI", "spiffe://example.org/api")]
        await call(running, "kv", "get", who("api", source="mtls", sans=uri))
        # The URI glob does not match a DNS name with the same text.
        dns_twin = [("DNS", "spiffe://example.org/api")]
        await denied(running, "kv", "get", subject="api", source="mtls", sans=dns_twin)
        billing = [("DNS", "api.billing.internal")]
        await call(running, "kv", "set", who("api", source="mtls", sans=billing))
        await denied(running, "kv", "set", subject="api", source="mtls", sans=uri)
        await denied(running, "kv", "get", subject="api", source="mtls")


async def test_authorizer_claims_equal_or_contain() -> None:
    rules = [
        {"claims": {"team": "payments", "roles": "writer", "org.tier": 2}, "operations": ["*"]}
    ]
    async with proxy(ns("kv", rules=rules)) as running:
        good = {"team": "payments", "roles": ["reader", "writer"], "org": {"tier": 2}}
        await call(running, "kv", "set", who("bob", claims=good))
        for bad in (
            {**good, "team": "search"},
            {**good, "roles": ["reader"]},
            {**good, "org": {"tier": "2"}},  # a string is not the number 2
            {"team": "payments", "roles": "writer"},  # org.tier missing
        ):
            await denied(running, "kv", "set", subject="bob", claims=bad)


async def test_authorizer_scopes_all_required() -> None:
    rules = [{"scopes": ["kv:read", "kv:write"], "operations": ["set"]}]
    async with proxy(ns("kv", rules=rules)) as running:
        await call(running, "kv", "set", who("c", scopes=["kv:write", "kv:read", "x"]))
        await denied(running, "kv", "set", subject="c", scopes=["kv:write"])
        await denied(running, "kv", "set", subject="c")


async def test_authorizer_first_matching_rule_allows_and_rules_apply_to_anonymous() -> None:
    rules = [
        {"subject": "admin", "operations": ["*"]},
        {"subject": "anonymous", "operations": ["get"]},
    ]
    async with proxy(ns("kv", anonymous=True, rules=rules)) as running:
        await call(running, "kv", "set", who("admin"))
        await call(running, "kv", "get")
        await denied(running, "kv", "set")
        await denied(running, "kv", "set", subject="eve")
        assert denials(running) == {"kv": 2.0}


async def test_authorizer_streams_are_authorized_when_they_open() -> None:
    async with proxy(ns("kv")) as running:
        first = bytes(StreamRequest(namespace="kv", operation="watch"))

        async def open_stream() -> None:
            async with running.channel.stream(
                "/prism.proxy.v1.DataProxy/ExecuteStream", bytes
            ) as stream:
                await stream.send_message(first)
                await stream.receive_message()

        with pytest.raises(PermissionDenied, match="'watch' on namespace 'kv'"):
            await open_stream()


def test_authorizer_with_grpcio(tmp_path: Any) -> None:
    """grpcio sees PERMISSION_DENIED with the namespace and operation in its details."""

    async def main() -> None:
        async with proxy(ns("kv")) as running:
            target = running.target

            def blocking() -> grpc.RpcError:
                with grpc.insecure_channel(target) as channel:
                    execute = channel.unary_unary(
                        "/prism.proxy.v1.DataProxy/Execute",
                        request_serializer=bytes,
                        response_deserializer=ExecuteResponse.parse,
                    )
                    try:
                        execute(bytes(ExecuteRequest(namespace="kv", operation="get")), timeout=30)
                    except grpc.RpcError as exc:
                        return exc
                raise AssertionError("the call was allowed")

            error: Any = await trio.to_thread.run_sync(blocking)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == "caller may not call 'get' on namespace 'kv'"

    trio.run(main)


def test_access_rule_config_errors() -> None:
    from prism.config import ConfigError

    with pytest.raises(ConfigError, match=r"operations: "):
        AccessRule(operations=[])
    with pytest.raises(ConfigError, match="unknown field"):
        AccessRule(operations=["*"], subjects="x")
    with pytest.raises(ConfigError, match="anonymous: expected true or false"):
        NamespaceConfig("kv", PluginConfig("memstore"), access={"anonymous": "yes"})
