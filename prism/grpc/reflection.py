"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), as grpcurl and grpcio use it.

Answers come from a serialized ``FileDescriptorSet`` (``protoc --descriptor_set_out
--include_imports``); Prism's own is ``prism/_proto/descriptors.binpb``. To serve reflection for
everything a server serves::

    server = pg.Server([Health(), MyService()])
    enable_reflection(server, default_descriptor_set() + my_descriptor_set)

Several sets may be concatenated: protobuf merges the repeated ``file`` field, and a file that
appears twice is kept once. Descriptors are served as the bytes protoc wrote (custom options
included); only the names reflection looks up are decoded.
"""

from __future__ import annotations

import importlib.resources
from collections import defaultdict
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import betterproto2

from prism._proto.grpc.reflection import v1, v1alpha
from prism.grpc.service import Service, stream_stream
from prism.grpc.wire.status import Status

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall
    from prism.grpc.server import Server

__all__ = [
    "Reflection",
    "ReflectionV1",
    "ReflectionV1Alpha",
    "default_descriptor_set",
    "enable_reflection",
]

# Field numbers from google/protobuf/descriptor.proto, for the names reflection looks up.
_SET_FILE = 1
_FILE_PACKAGE, _FILE_DEPENDENCY = 2, 3
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_EXTENSION = 4, 5, 6, 7
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_EXTENSION, _MESSAGE_ONEOF = 2, 3, 4, 6, 8
_FIELD_EXTENDEE, _FIELD_NUMBER = 2, 3
_ENUM_VALUE = 2
_SERVICE_METHOD = 2
_NAME = 1  # the name of every kind of descriptor


def default_descriptor_set() -> bytes:
    """The descriptors of Prism's own protos (health, reflection, plugin and proxy APIs)."""
    return (importlib.resources.files("prism._proto") / "descriptors.binpb").read_bytes()


def _fields(data: bytes) -> defaultdict[int, list[Any]]:
    by_number: defaultdict[int, list[Any]] = defaultdict(list)
    for field in betterproto2.parse_fields(data):
        by_number[field.number].append(field.value)
    return by_number


def _name(fields: defaultdict[int, list[Any]], number: int = _NAME) -> str:
    values = fields.get(number)
    return bytes(values[-1]).decode() if values else ""


class Reflection:
    """The answers of the reflection services (sans-IO: one request in, one response out).

    ``service_names`` is what ``list_services`` reports: a collection, or a callable read at
    each request (so services added to a server later are listed too).
    """

    def __init__(
        self,
        descriptor_set: bytes | None = None,
        service_names: Iterable[str] | Callable[[], Iterable[str]] = (),
    ) -> None:
        self._service_names = service_names if callable(service_names) else tuple(service_names)
        self._files: dict[str, bytes] = {}
        self._dependencies: dict[str, list[str]] = {}
        self._symbols: dict[str, str] = {}  # fully qualified name → file name
        self._messages: set[str] = set()
        self._extensions: dict[str, dict[int, str]] = {}  # extendee → number → file
        data = default_descriptor_set() if descriptor_set is None else descriptor_set
        for raw in _fields(data)[_SET_FILE]:
            self._add_file(bytes(raw))

    @classmethod
    def for_server(cls, server: Server, descriptor_set: bytes | None = None) -> Reflection:
        """Reflection listing whatever ``server`` serves, now and after later ``add_service``."""
        return cls(descriptor_set, lambda: server.service_names)

    def services(self) -> list[Service]:
        """Both reflection services (v1 and v1alpha), ready for ``Server``/``add_service``."""
        return [ReflectionV1(self), ReflectionV1Alpha(self)]

    @property
    def service_names(self) -> list[str]:
        names = self._service_names() if callable(self._service_names) else self._service_names
        return sorted(set(names))

    def file_names(self) -> list[str]:
        return list(self._files)

    def file_containing(self, symbol: str) -> str | None:
        return self._symbols.get(symbol.removeprefix("."))

    def files_for(self, file_name: str) -> list[bytes]:
        """``file_name`` then its transitive dependencies, each once (empty when unknown)."""
        if file_name not in self._files:
            return []
        order: list[str] = []
        pending = [file_name]
        while pending:
            name = pending.pop(0)
            if name in order or name not in self._files:
                continue
            order.append(name)
            pending += self._dependencies[name]
        return [self._files[name] for name in order]

    def answer(self, request: Any, pb: ModuleType = v1) -> Any:
        """The ``ServerReflectionResponse`` (of module ``pb``: v1 or v1alpha) to ``request``."""
        kind, found = betterproto2.which_one_of(request, "message_request")
        value: Any = found
        if kind == "list_services":
            services = [pb.ServiceResponse(name=name) for name in self.service_names]
            listing = pb.ListServiceResponse(service=services)
            return self._response(request, pb, list_services_response=listing)
        if kind == "all_extension_numbers_of_type":
            name = value.removeprefix(".")
            if name not in self._messages:
                return self._not_found(request, pb, f"message type {value!r}")
            numbers = sorted(self._extensions.get(name, {}))
            answer = pb.ExtensionNumberResponse(base_type_name=name, extension_number=numbers)
            return self._response(request, pb, all_extension_numbers_response=answer)
        if kind == "file_by_filename":
            files, what = self.files_for(value), f"file {value!r}"
        elif kind == "file_containing_symbol":
            files, what = self.files_for(self.file_containing(value) or ""), f"symbol {value!r}"
        elif kind == "file_containing_extension":
            extendee = value.containing_type.removeprefix(".")
            number = value.extension_number
            files = self.files_for(self._extensions.get(extendee, {}).get(number, ""))
            what = f"extension {number} of {value.containing_type!r}"
        else:
            error = pb.ErrorResponse(
                error_code=int(Status.INVALID_ARGUMENT), error_message="empty reflection request"
            )
            return self._response(request, pb, error_response=error)
        if not files:
            return self._not_found(request, pb, what)
        answer = pb.FileDescriptorResponse(file_descriptor_proto=files)
        return self._response(request, pb, file_descriptor_response=answer)

    @staticmethod
    def _response(request: Any, pb: ModuleType, **answer: Any) -> Any:
        return pb.ServerReflectionResponse(
            valid_host=request.host, original_request=request, **answer
        )

    @classmethod
    def _not_found(cls, request: Any, pb: ModuleType, what: str) -> Any:
        error = pb.ErrorResponse(
            error_code=int(Status.NOT_FOUND), error_message=f"{what} not found"
        )
        return cls._response(request, pb, error_response=error)

    def _add_file(self, raw: bytes) -> None:
        fields = _fields(raw)
        file_name = _name(fields)
        if file_name in self._files:
            return
        self._files[file_name] = raw
        self._dependencies[file_name] = [bytes(d).decode() for d in fields[_FILE_DEPENDENCY]]
        package = _name(fields, _FILE_PACKAGE)
        scope = f"{package}." if package else ""
        for message in fields[_FILE_MESSAGE]:
            self._add_message(_fields(message), scope, file_name)
        for enum in fields[_FILE_ENUM]:
            self._add_enum(_fields(enum), scope, file_name)
        for extension in fields[_FILE_EXTENSION]:
            self._add_extension(_fields(extension), scope, file_name)
        for service in fields[_FILE_SERVICE]:
            service_fields = _fields(service)
            service_name = scope + _name(service_fields)
            self._symbols[service_name] = file_name
            for method in service_fields[_SERVICE_METHOD]:
                self._symbols[f"{service_name}.{_name(_fields(method))}"] = file_name

    def _add_message(self, fields: defaultdict[int, list[Any]], scope: str, file: str) -> None:
        full_name = scope + _name(fields)
        self._symbols[full_name] = file
        self._messages.add(full_name)
        for number in (_MESSAGE_FIELD, _MESSAGE_ONEOF):
            for member in fields[number]:
                self._symbols[f"{full_name}.{_name(_fields(member))}"] = file
        for nested in fields[_MESSAGE_NESTED]:
            self._add_message(_fields(nested), f"{full_name}.", file)
        for enum in fields[_MESSAGE_ENUM]:
            self._add_enum(_fields(enum), f"{full_name}.", file)
        for extension in fields[_MESSAGE_EXTENSION]:
            self._add_extension(_fields(extension), f"{full_name}.", file)

    def _add_enum(self, fields: defaultdict[int, list[Any]], scope: str, file: str) -> None:
        self._symbols[scope + _name(fields)] = file
        # Enum values are scoped like C++: siblings of their enum, not children.
        for value in fields[_ENUM_VALUE]:
            self._symbols[scope + _name(_fields(value))] = file

    def _add_extension(self, fields: defaultdict[int, list[Any]], scope: str, file: str) -> None:
        self._symbols[scope + _name(fields)] = file
        extendee = _name(fields, _FIELD_EXTENDEE).removeprefix(".")
        for number in fields[_FIELD_NUMBER]:
            self._extensions.setdefault(extendee, {})[number] = file


class ReflectionV1(Service):
    """``grpc.reflection.v1.ServerReflection`` (grpcurl, grpc-go and grpc-java today)."""

    name = "grpc.reflection.v1.ServerReflection"

    def __init__(self, reflection: Reflection) -> None:
        self.reflection = reflection

    @stream_stream("ServerReflectionInfo", v1.ServerReflectionRequest, v1.ServerReflectionResponse)
    async def server_reflection_info(self, call: ServerCall) -> None:
        """One response per request, in order, until the client half-closes."""
        async for request in call:
            await call.send_message(self.reflection.answer(request, v1))


class ReflectionV1Alpha(Service):
    """``grpc.reflection.v1alpha.ServerReflection`` (grpcio's client, older grpcurl)."""

    name = "grpc.reflection.v1alpha.ServerReflection"

    def __init__(self, reflection: Reflection) -> None:
        self.reflection = reflection

    @stream_stream(
        "ServerReflectionInfo", v1alpha.ServerReflectionRequest, v1alpha.ServerReflectionResponse
    )
    async def server_reflection_info(self, call: ServerCall) -> None:
        """One response per request, in order, until the client half-closes."""
        async for request in call:
            await call.send_message(self.reflection.answer(request, v1alpha))


def enable_reflection(server: Server, descriptor_set: bytes | None = None) -> Reflection:
    """Add both reflection services to ``server``; they list every service it serves."""
    reflection = Reflection.for_server(server, descriptor_set)
    for service in reflection.services():
        server.add_service(service)
    return reflection
