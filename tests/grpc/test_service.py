"""prism.grpc.service: messages are decoded strictly (what protobuf's parser rejects is
INVALID_ARGUMENT, and the connection serves on), and ``bytes`` handlers are never decoded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import trio
from grpc_testkit import Echo, serving

from prism import grpc as pg
from prism._proto.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from prism._proto.grpc.reflection.v1 import ServerReflectionResponse
from prism._proto.prism.data.v1 import SetRequest
from prism.grpc.health import Health, HealthState, ServingStatus
from prism.grpc.reflection import Reflection
from prism.grpc.service import decode

CHECK = "/grpc.health.v1.Health/Check"
REFLECT = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
# HealthCheckRequest.service (field 1, a string) declared as 9 bytes with 3 present.
TRUNCATED = b"\x0a\x09abc"


@pytest.fixture
async def target() -> AsyncIterator[str]:
    state = HealthState({"pkg.A": ServingStatus.SERVING})
    async with serving(Health(state), *Reflection().services(), Echo()) as (_server, target):
        yield target


def test_service_decode_is_strict() -> None:
    with pytest.raises(pg.InvalidArgument) as info:
        decode(SetRequest, b"\x0a\x05ab")
    assert info.value.message == (
        "malformed prism.data.v1.SetRequest: field 1 (key) runs past the end of its message"
    )
    assert decode(SetRequest, b"\x0a\x02ab") == SetRequest(key="ab")


def test_service_decode_bytes_is_the_bytes_themselves() -> None:
    data = b"\x0a\x05ab"  # malformed as protobuf, but a bytes handler never decodes
    assert decode(bytes, data) is data


async def test_service_malformed_request_is_invalid_argument_and_the_connection_serves_on(
    target: str,
) -> None:
    with trio.fail_after(30):
        async with pg.open_channel(target) as channel:
            for bad in (TRUNCATED, b"\x0a\x02\xff\xfe", b"\x0b", b"\x00"):
                with pytest.raises(pg.InvalidArgument, match=r"malformed grpc\.health\.v1"):
                    await channel.unary_unary(CHECK, bad, HealthCheckResponse)
            reply = await channel.unary_unary(
                CHECK, HealthCheckRequest(service="pkg.A"), HealthCheckResponse
            )
            assert reply.status == ServingStatus.SERVING
            # A bytes handler takes the same bytes as they came.
            assert await channel.unary_unary("/test.Echo/Unary", TRUNCATED, bytes) == TRUNCATED


async def test_service_malformed_stream_message_ends_the_call_invalid_argument(
    target: str,
) -> None:
    with trio.fail_after(30):
        async with (
            pg.open_channel(target) as channel,
            channel.stream(REFLECT, ServerReflectionResponse) as call,
        ):
            await call.send_message(b"\x3a\x04ab")  # list_services, cut short
            await call.end()
            with pytest.raises(pg.InvalidArgument, match="ServerReflectionRequest"):
                await call.receive_message()


async def test_service_grpcio_client_gets_invalid_argument_with_the_reason(target: str) -> None:
    def check() -> tuple[grpc.StatusCode, str, bytes]:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(CHECK)  # no serializers: raw bytes both ways
            try:
                call(TRUNCATED, timeout=10)
            except grpc.RpcError as exc:
                error = exc
            else:
                raise AssertionError("a malformed request was accepted")
            good = call(bytes(HealthCheckRequest(service="pkg.A")), timeout=10)
            return error.code(), error.details(), good  # type: ignore[attr-defined]

    with trio.fail_after(30):
        code, details, good = await trio.to_thread.run_sync(check)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "malformed grpc.health.v1.HealthCheckRequest: field 1 (service) runs past the end of "
        "its message"
    )
    assert HealthCheckResponse.parse(good).status == ServingStatus.SERVING
