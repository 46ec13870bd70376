from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import trio
from google.protobuf import descriptor_pb2, descriptor_pool

from prism import grpc as pg
from prism._proto.grpc.reflection import v1, v1alpha
from prism.grpc.health import Health
from prism.grpc.reflection import (
    Reflection,
    ReflectionV1,
    default_descriptor_set,
    enable_reflection,
)

T = descriptor_pb2.FieldDescriptorProto


def _file(
    name: str, package: str = "", deps: tuple[str, ...] = ()
) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(
        name=name, package=package, dependency=list(deps), syntax="proto3"
    )


def sample_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """A diamond of files (top → left, right → base) with every kind of symbol in it."""
    base = _file("base.proto", "demo.base")
    base.message_type.add(name="Id").field.add(name="value", number=1, type=T.TYPE_STRING)
    ext = base.message_type.add(name="Extendable")
    ext.extension_range.add(start=100, end=200)
    base.syntax = "proto2"

    left = _file("left.proto", "demo", ("base.proto",))
    left.message_type.add(name="Left").field.add(
        name="id", number=1, type=T.TYPE_MESSAGE, type_name=".demo.base.Id"
    )
    left.extension.add(
        name="tag",
        number=150,
        type=T.TYPE_STRING,
        extendee=".demo.base.Extendable",
        label=T.LABEL_OPTIONAL,
    )
    left.syntax = "proto2"

    right = _file("right.proto", "demo", ("base.proto",))
    outer = right.message_type.add(name="Outer")
    outer.nested_type.add(name="Inner").field.add(name="n", number=1, type=T.TYPE_INT32)
    outer.enum_type.add(name="Kind").value.add(name="KIND_UNSET", number=0)
    outer.oneof_decl.add(name="choice")
    outer.field.add(name="x", number=1, type=T.TYPE_INT32, oneof_index=0)
    right.enum_type.add(name="Color").value.add(name="COLOR_UNSET", number=0)

    top = _file("top.proto", "demo.api.v1", ("left.proto", "right.proto"))
    svc = top.service.add(name="Api")
    svc.method.add(name="Get", input_type=".demo.Left", output_type=".demo.Outer")
    svc.options.deprecated = True  # served as protoc wrote it, options included

    plain = _file("plain.proto")  # no package: names are top level
    plain.message_type.add(name="Loose")
    return [base, left, right, top, plain]


def descriptor_set(files: list[descriptor_pb2.FileDescriptorProto]) -> bytes:
    return bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())


@pytest.fixture
def reflection() -> Reflection:
    return Reflection(descriptor_set(sample_files()), ["demo.api.v1.Api", "grpc.health.v1.Health"])


def file_names(response: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


def error_code(response: Any) -> int | None:
    return response.error_response.error_code if response.error_response else None


# -- answers (sans-IO) --------------------------------------------------------------------------


def test_reflection_list_services_sorted(reflection: Reflection) -> None:
    response = reflection.answer(v1.ServerReflectionRequest(list_services=""))
    assert [s.name for s in response.list_services_response.service] == [
        "demo.api.v1.Api",
        "grpc.health.v1.Health",
    ]


def test_reflection_list_services_reads_names_live() -> None:
    names = ["a.A"]
    reflection = Reflection(descriptor_set([]), lambda: names)
    names.append("b.B")
    assert reflection.service_names == ["a.A", "b.B"]


def test_reflection_file_by_filename_with_transitive_dependencies(reflection: Reflection) -> None:
    response = reflection.answer(v1.ServerReflectionRequest(file_by_filename="top.proto"))
    names = file_names(response)
    assert names[0] == "top.proto"
    assert sorted(names) == ["base.proto", "left.proto", "right.proto", "top.proto"]


def test_reflection_file_without_dependencies_is_alone(reflection: Reflection) -> None:
    response = reflection.answer(v1.ServerReflectionRequest(file_by_filename="plain.proto"))
    assert file_names(response) == ["plain.proto"]


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("demo.api.v1.Api", "top.proto"),
        ("demo.api.v1.Api.Get", "top.proto"),
        (".demo.api.v1.Api", "top.proto"),
        ("demo.Left", "left.proto"),
        ("demo.Left.id", "left.proto"),
        ("demo.tag", "left.proto"),
        ("demo.Outer.Inner", "right.proto"),
        ("demo.Outer.Inner.n", "right.proto"),
        ("demo.Outer.Kind", "right.proto"),
        ("demo.Outer.KIND_UNSET", "right.proto"),
        ("demo.Outer.choice", "right.proto"),
        ("demo.Color", "right.proto"),
        ("demo.COLOR_UNSET", "right.proto"),
        ("demo.base.Id", "base.proto"),
        ("Loose", "plain.proto"),
    ],
)
def test_reflection_file_containing_symbol(reflection: Reflection, symbol: str, file: str) -> None:
    response = reflection.answer(v1.ServerReflectionRequest(file_containing_symbol=symbol))
    assert error_code(response) is None
    assert file_names(response)[0] == file


@pytest.mark.parametrize(
    "request_",
    [
        v1.ServerReflectionRequest(file_by_filename="missing.proto"),
        v1.ServerReflectionRequest(file_containing_symbol="demo.Missing"),
        v1.ServerReflectionRequest(file_containing_symbol="demo"),  # a package is no symbol
        v1.ServerReflectionRequest(all_extension_numbers_of_type="demo.Missing"),
        v1.ServerReflectionRequest(
            file_containing_extension=v1.ExtensionRequest(
                containing_type="demo.base.Extendable", extension_number=101
            )
        ),
    ],
)
def test_reflection_unknown_names_are_not_found(reflection: Reflection, request_: Any) -> None:
    response = reflection.answer(request_)
    assert error_code(response) == pg.Status.NOT_FOUND
    assert "not found" in response.error_response.error_message
    assert response.original_request == request_


def test_reflection_empty_request_is_invalid_argument(reflection: Reflection) -> None:
    response = reflection.answer(v1.ServerReflectionRequest(host="h"))
    assert error_code(response) == pg.Status.INVALID_ARGUMENT


def test_reflection_echoes_host_and_request(reflection: Reflection) -> None:
    request = v1.ServerReflectionRequest(host="example:50051", list_services="*")
    response = reflection.answer(request)
    assert response.valid_host == "example:50051"
    assert response.original_request == request


def test_reflection_extensions(reflection: Reflection) -> None:
    numbers = reflection.answer(
        v1.ServerReflectionRequest(all_extension_numbers_of_type="demo.base.Extendable")
    ).all_extension_numbers_response
    assert numbers.base_type_name == "demo.base.Extendable"
    assert list(numbers.extension_number) == [150]
    response = reflection.answer(
        v1.ServerReflectionRequest(
            file_containing_extension=v1.ExtensionRequest(
                containing_type="demo.base.Extendable", extension_number=150
            )
        )
    )
    assert file_names(response) == ["left.proto", "base.proto"]


def test_reflection_message_without_extensions_has_none(reflection: Reflection) -> None:
    response = reflection.answer(
        v1.ServerReflectionRequest(all_extension_numbers_of_type="demo.Left")
    )
    assert list(response.all_extension_numbers_response.extension_number) == []


def test_reflection_serves_descriptors_byte_for_byte(reflection: Reflection) -> None:
    files = {f.name: f.SerializeToString() for f in sample_files()}
    response = reflection.answer(v1.ServerReflectionRequest(file_by_filename="top.proto"))
    for raw in response.file_descriptor_response.file_descriptor_proto:
        assert raw == files[descriptor_pb2.FileDescriptorProto.FromString(raw).name]


def test_reflection_concatenated_sets_keep_each_file_once() -> None:
    files = sample_files()
    reflection = Reflection(descriptor_set(files[:3]) + descriptor_set(files), ())
    assert sorted(reflection.file_names()) == sorted(f.name for f in files)


def test_reflection_v1alpha_answers_in_v1alpha_types(reflection: Reflection) -> None:
    request = v1alpha.ServerReflectionRequest(file_containing_symbol="demo.Left")
    response = reflection.answer(request, v1alpha)
    assert isinstance(response, v1alpha.ServerReflectionResponse)
    assert file_names(response)[0] == "left.proto"


def test_reflection_default_set_answers_are_complete_for_a_descriptor_pool() -> None:
    reflection = Reflection(None, ())
    symbols = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "prism.plugin.v1.BackendPlugin",
        "prism.proxy.v1.DataProxy",
    ]
    for symbol in symbols:
        pool = descriptor_pool.DescriptorPool()
        response = reflection.answer(v1.ServerReflectionRequest(file_containing_symbol=symbol))
        # Dependencies first: a pool only accepts files whose imports it already has.
        for raw in reversed(response.file_descriptor_response.file_descriptor_proto):
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
        assert pool.FindServiceByName(symbol).methods


def test_reflection_default_descriptor_set_is_packaged() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(default_descriptor_set()).file
    assert {"grpc/health/v1/health.proto", "grpc/reflection/v1/reflection.proto"} <= {
        f.name for f in files
    }


# -- the service -----------------------------------------------------------------------------


class FakeStreamCall:
    def __init__(self, requests: list[Any]) -> None:
        self.requests = requests
        self.sent: list[Any] = []

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        for request in self.requests:
            await trio.lowlevel.checkpoint()
            yield request

    async def send_message(self, message: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(message)


async def test_reflection_service_answers_each_request_in_order(reflection: Reflection) -> None:
    requests = [
        v1.ServerReflectionRequest(list_services=""),
        v1.ServerReflectionRequest(file_containing_symbol="demo.Missing"),
        v1.ServerReflectionRequest(file_by_filename="plain.proto"),
    ]
    call = FakeStreamCall(requests)
    await ReflectionV1(reflection).server_reflection_info(cast("pg.ServerCall", call))
    assert [r.original_request for r in call.sent] == requests
    assert error_code(call.sent[1]) == pg.Status.NOT_FOUND
    assert file_names(call.sent[2]) == ["plain.proto"]


def test_reflection_services_have_the_standard_names(reflection: Reflection) -> None:
    assert sorted(s.name for s in reflection.services()) == [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    methods = [m for s in reflection.services() for m in s.rpc_methods()]
    assert sorted(methods) == [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]


def test_enable_reflection_lists_every_served_service() -> None:
    server = pg.Server([Health()])
    reflection = enable_reflection(server)
    server.add_service(ReflectionV1(reflection))  # added later: still listed (once)
    assert reflection.service_names == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]


# -- over the network, through prism's own server and channel --------------------------------


@pytest.fixture
async def channel(nursery: trio.Nursery) -> AsyncIterator[pg.Channel]:
    server = pg.Server([Health()])
    enable_reflection(server)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    async with pg.open_channel(f"{host}:{port}") as channel:
        yield channel


@pytest.mark.parametrize("pb", [v1, v1alpha], ids=["v1", "v1alpha"])
async def test_reflection_over_network_several_requests_on_one_stream(
    channel: pg.Channel, pb: Any
) -> None:
    method = f"/{pb.__name__.removeprefix('prism._proto.')}.ServerReflection/ServerReflectionInfo"
    with trio.fail_after(5):
        async with channel.stream(method, pb.ServerReflectionResponse) as call:
            await call.send_message(pb.ServerReflectionRequest(list_services=""))
            listed = await call.receive_message()
            await call.send_message(
                pb.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health.Check")
            )
            found = await call.receive_message()
            await call.send_message(pb.ServerReflectionRequest(file_by_filename="nope.proto"))
            missing = await call.receive_message()
            await call.end()
            assert await call.receive_message() is None
    assert [s.name for s in listed.list_services_response.service] == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert file_names(found) == ["grpc/health/v1/health.proto"]
    assert error_code(missing) == pg.Status.NOT_FOUND
