"""grpcio's health and reflection clients against prism's server.

grpcio is synchronous: its calls run in a worker thread (``trio.to_thread.run_sync``) while the
prism server runs in the test's nursery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import pytest
import trio
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from prism import grpc as pg
from prism.grpc.health import Health, HealthState, ServingStatus
from prism.grpc.reflection import enable_reflection

R = TypeVar("R")


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[HealthState, str]:
    state = HealthState({"pkg.A": ServingStatus.SERVING})
    server = pg.Server([Health(state)])
    enable_reflection(server)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    return state, f"{host}:{port}"


async def with_grpcio(target: str, func: Callable[[grpc.Channel], R]) -> R:
    def run() -> R:
        with grpc.insecure_channel(target) as channel:
            return func(channel)

    with trio.fail_after(20):
        return await trio.to_thread.run_sync(run)


async def test_grpcio_health_check(served: tuple[HealthState, str]) -> None:
    def check(channel: grpc.Channel) -> list[int]:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
            for name in ("", "pkg.A")
        ]

    assert await with_grpcio(served[1], check) == [health_pb2.HealthCheckResponse.SERVING] * 2


async def test_grpcio_health_check_unknown_service(served: tuple[HealthState, str]) -> None:
    def check(channel: grpc.Channel) -> Any:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="pkg.Nope"), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return None

    code, details = await with_grpcio(served[1], check)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "pkg.Nope" in details


async def test_grpcio_health_watch_sees_changes(served: tuple[HealthState, str]) -> None:
    state, target = served

    def watch(channel: grpc.Channel) -> list[int]:
        stub = health_pb2_grpc.HealthStub(channel)
        replies = stub.Watch(health_pb2.HealthCheckRequest(service="pkg.A"), timeout=10)
        seen = [next(replies).status]
        trio.from_thread.run_sync(state.set, "pkg.A", ServingStatus.NOT_SERVING)
        seen.append(next(replies).status)
        trio.from_thread.run_sync(state.set, "pkg.A", ServingStatus.SERVING)
        seen.append(next(replies).status)
        replies.cancel()
        return seen

    assert await with_grpcio(target, watch) == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    ]


async def test_grpcio_health_watch_unknown_service(served: tuple[HealthState, str]) -> None:
    def watch(channel: grpc.Channel) -> int:
        stub = health_pb2_grpc.HealthStub(channel)
        replies = stub.Watch(health_pb2.HealthCheckRequest(service="pkg.Later"), timeout=10)
        status: int = next(replies).status
        replies.cancel()
        return status

    status = await with_grpcio(served[1], watch)
    assert status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def test_grpcio_reflection_lists_services(served: tuple[HealthState, str]) -> None:
    def services(channel: grpc.Channel) -> list[str]:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    assert await with_grpcio(served[1], services) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]


async def test_grpcio_reflection_descriptor_pool(served: tuple[HealthState, str]) -> None:
    def describe(channel: grpc.Channel) -> dict[str, Any]:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        health = pool.FindServiceByName("grpc.health.v1.Health")
        # plugin.proto imports any.proto: the pool needs the dependency from the same answer.
        execute = pool.FindMessageTypeByName("prism.plugin.v1.ExecuteRequest")
        try:
            pool.FindMessageTypeByName("pkg.Nope")
        except KeyError:
            missing = True
        else:
            missing = False
        return {
            "methods": [m.name for m in health.methods],
            "check_input": health.methods_by_name["Check"].input_type.full_name,
            "execute_file": execute.file.name,
            "execute_deps": [d.name for d in execute.file.dependencies],
            "missing": missing,
        }

    described = await with_grpcio(served[1], describe)
    assert described == {
        "methods": ["Check", "Watch"],
        "check_input": "grpc.health.v1.HealthCheckRequest",
        "execute_file": "prism/plugin/v1/plugin.proto",
        "execute_deps": ["google/protobuf/any.proto"],
        "missing": True,
    }


async def test_grpcio_reflection_v1_endpoint(served: tuple[HealthState, str]) -> None:
    # grpcio ships only v1alpha stubs; v1's messages are the same on the wire.
    def ask(channel: grpc.Channel) -> list[Any]:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="pkg.Nope"),
        ]
        return list(info(iter(requests), timeout=10))

    listed, missing = await with_grpcio(served[1], ask)
    assert "grpc.health.v1.Health" in [s.name for s in listed.list_services_response.service]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
