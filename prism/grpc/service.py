"""Declaring services: a class per service, a decorated method per RPC."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import betterproto2

from prism.grpc import protocheck
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import InvalidArgument

F = TypeVar("F", bound=Callable[..., Any])
MessageType = type[betterproto2.Message] | type[bytes]


class Cardinality(enum.Enum):
    UNARY_UNARY = (False, False)
    UNARY_STREAM = (False, True)
    STREAM_UNARY = (True, False)
    STREAM_STREAM = (True, True)

    @property
    def client_streaming(self) -> bool:
        return self.value[0]

    @property
    def server_streaming(self) -> bool:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class RpcMethod:
    name: str
    cardinality: Cardinality
    request_type: MessageType
    response_type: MessageType


def encode(message: betterproto2.Message | bytes | Pieces) -> bytes | Pieces:
    """A message's bytes; :class:`~prism.grpc.wire.framing.Pieces` as they are (sent unjoined)."""
    return message if isinstance(message, bytes | Pieces) else bytes(message)


def decode(message_type: MessageType, data: bytes) -> Any:
    """Bytes → ``message_type``; ``bytes`` means no decoding at all.

    Strict: bytes protobuf's reference parser rejects raise ``InvalidArgument`` saying what is
    wrong (:mod:`prism.grpc.protocheck`), before betterproto2, which is lenient, reads them."""
    if message_type is bytes:
        return data
    assert issubclass(message_type, betterproto2.Message)
    checked = protocheck.check(message_type, data)
    try:
        return message_type.parse(checked)
    except Exception as exc:  # what the check passed but betterproto2 still refuses
        raise InvalidArgument(
            f"could not decode message as {message_type.__name__}: {type(exc).__name__}"
        ) from None


def _rpc(cardinality: Cardinality) -> Callable[[str, MessageType, MessageType], Callable[[F], F]]:
    def decorator_factory(
        name: str, request_type: MessageType, response_type: MessageType
    ) -> Callable[[F], F]:
        def decorate(func: F) -> F:
            func.__prism_rpc__ = RpcMethod(name, cardinality, request_type, response_type)  # type: ignore[attr-defined]
            return func

        return decorate

    return decorator_factory


unary_unary = _rpc(Cardinality.UNARY_UNARY)
unary_stream = _rpc(Cardinality.UNARY_STREAM)
stream_unary = _rpc(Cardinality.STREAM_UNARY)
stream_stream = _rpc(Cardinality.STREAM_STREAM)


class Service:
    """Base class for services. Set ``name`` to the fully qualified service name."""

    name: ClassVar[str]

    def rpc_methods(self) -> dict[str, tuple[RpcMethod, Callable[..., Any]]]:
        """``{"/pkg.Service/Method": (RpcMethod, bound handler)}`` for every decorated method."""
        found: dict[str, tuple[RpcMethod, Callable[..., Any]]] = {}
        for klass in reversed(type(self).__mro__):
            for attr, value in vars(klass).items():
                rpc = getattr(value, "__prism_rpc__", None)
                if isinstance(rpc, RpcMethod):
                    found[f"/{self.name}/{rpc.name}"] = (rpc, getattr(self, attr))
        return found
