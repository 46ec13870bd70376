"""``google.protobuf.Any`` for messages of any betterproto2-generated package.

betterproto2's own ``Any.pack``/``Any.unpack`` look types up in one message pool, but every
generated package (the core's ``prism._proto``, each plugin's ``_proto``) has its own pool. These
helpers find the pool of the message's own package, so a plugin's config message packs exactly
like a core message, and they turn every mismatch into ``InvalidArgument``.
"""

from __future__ import annotations

import sys
from typing import TypeVar

import betterproto2

from prism._proto.google.protobuf import Any
from prism.grpc import protocheck
from prism.grpc.wire.status import InvalidArgument
from prism.sdk import _fastcodec

__all__ = ["TYPE_URL_PREFIX", "pack", "type_name", "type_url", "unpack"]

M = TypeVar("M", bound=betterproto2.Message)

TYPE_URL_PREFIX = "type.googleapis.com/"


def type_url(cls: type[betterproto2.Message]) -> str:
    """``type.googleapis.com/<full.proto.Name>`` of a generated message class.

    Raises ``TypeError`` for a class no generated package registered (a programming error, not
    a request's).
    """
    module = sys.modules.get(cls.__module__)
    pool = getattr(module, "default_message_pool", None)
    url = pool.type_to_url.get(cls) if isinstance(pool, betterproto2.MessagePool) else None
    if url is None:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} is not a message of a betterproto2-generated "
            "package (generate it from a .proto with `nox -s protos`)"
        )
    return url


def type_name(url: str) -> str:
    """The full message name of a type URL: everything after its last ``/`` (as the spec says)."""
    return url.rpartition("/")[2]


def pack(message: betterproto2.Message) -> Any:
    """``message`` in an ``Any`` with its ``type.googleapis.com/`` type URL."""
    return Any(type_url=type_url(type(message)), value=bytes(message))


#: The full message name of each class :func:`unpack` was asked for (it never changes).
_NAMES: dict[type, str] = {}


def unpack(any_message: Any | None, cls: type[M]) -> M:
    """The ``cls`` message inside ``any_message``.

    Raises ``InvalidArgument`` naming the expected type and what came instead when the ``Any``
    is missing or empty, holds another type, or its bytes are what protobuf's reference parser
    rejects (:mod:`prism.grpc.protocheck`; the reason, never the bytes). Type URLs compare by
    message name, so any prefix (not only ``type.googleapis.com/``) is accepted.
    """
    expected = _NAMES.get(cls)
    if expected is None:
        expected = _NAMES[cls] = type_name(type_url(cls))
    if any_message is None or not any_message.type_url:
        raise InvalidArgument(f"expected {expected}, got nothing")
    if type_name(any_message.type_url) != expected:
        raise InvalidArgument(f"expected {expected}, got {any_message.type_url}")
    fused = _fastcodec.decode_checked(cls, any_message.value)
    if fused is not None:
        return fused  # type: ignore[no-any-return]
    try:
        checked = protocheck.check(cls, any_message.value)
    except protocheck.MalformedMessage as exc:
        raise InvalidArgument(f"expected {expected}, got malformed bytes: {exc.reason}") from None
    try:
        return _fastcodec.decode(cls, checked)  # type: ignore[no-any-return]
    except Exception:
        # The decoder's own message describes bytes we cannot vouch for; keep it out.
        raise InvalidArgument(f"expected {expected}, got bytes that do not decode as it") from None
