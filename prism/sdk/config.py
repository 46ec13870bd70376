"""A plugin's config message from the mapping an operator wrote in the proxy's YAML.

The proxy does not know plugins' config types: it sends ``InitializeRequest.config`` as a
``prism.config.v1.ConfigDocument`` (a ``google.protobuf.Struct`` of the YAML mapping, and the
directory of the config file, which relative paths in it are relative to), and the SDK converts
it here into the plugin's ``config_type``. Conversion is strict, so a typo or a wrong type fails
Initialize with ``INVALID_ARGUMENT`` naming the field instead of silently becoming a default:
unknown fields, ``1.5`` or ``true`` for an integer, a number for a string, integers out of their
field's range. Values are never echoed (a config may hold something sensitive); field names and
expected types are.

Errors about a field read ``config.FIELD: problem`` (:class:`InvalidConfig`; plugins raise it for
their own checks too): the proxy reports them as ``namespaces[N].config.FIELD: problem``, a path
in its config file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import betterproto2

from prism._proto.google.protobuf import Any as AnyMessage
from prism._proto.prism.config.v1 import ConfigDocument
from prism.grpc.wire.status import InvalidArgument
from prism.sdk.typed import type_name, type_url, unpack

__all__ = ["InvalidConfig", "config_dir_from_any", "config_from_any", "config_from_mapping"]

M = TypeVar("M", bound=betterproto2.Message)

_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "sint32": (-(2**31), 2**31 - 1),
    "sfixed32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "sint64": (-(2**63), 2**63 - 1),
    "sfixed64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "fixed32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "fixed64": (0, 2**64 - 1),
}


class InvalidConfig(InvalidArgument):
    """A field of the plugin's config is wrong: ``InvalidConfig("path", "required")`` reads
    ``config.path: required``. ``field`` is a name, a dotted path (``tls.ca``), or parts
    (``("hosts", 2)`` → ``config.hosts[2]``); ``""`` means the config as a whole."""

    def __init__(self, field: str | Sequence[str | int], problem: str) -> None:
        self.field = field_path(field)
        self.problem = problem
        super().__init__(f"{self.field}: {problem}")


def field_path(field: str | Sequence[str | int]) -> str:
    parts = [field] if isinstance(field, str) else list(field)
    path = "config"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += f".{part}"
    return path


def config_dir_from_any(config: AnyMessage | None) -> Path | None:
    """The directory relative paths in the config are relative to (the proxy's config file's),
    or None when the proxy sent none (the config was not read from a file, or not sent as a
    ``ConfigDocument``)."""
    if config is None or type_name(config.type_url) != type_name(type_url(ConfigDocument)):
        return None
    base = _unpack(config, ConfigDocument).base_dir
    return Path(base) if base else None


def config_from_any(config: AnyMessage | None, cls: type[M] | None) -> M | None:
    """The config ``InitializeRequest.config`` carries: ``cls`` packed directly, or a
    ``ConfigDocument`` converted into ``cls``. None when there is none (absent, or an empty
    document). ``cls=None`` means the plugin takes no config: anything non-empty is an error."""
    if config is None or not config.type_url:
        return None
    if type_name(config.type_url) == type_name(type_url(ConfigDocument)):
        document = _unpack(config, ConfigDocument)
        values = document.values.to_dict() if document.values is not None else {}
        if not values:
            return None
        if cls is None:
            raise InvalidConfig("", f"the plugin takes no config, got fields {sorted(values)}")
        return config_from_mapping(cls, values)
    if cls is None:
        raise InvalidConfig("", f"the plugin takes no config, got {config.type_url}")
    return _unpack(config, cls)


def _unpack(config: AnyMessage, cls: type[M]) -> M:
    try:
        return unpack(config, cls)
    except InvalidArgument as exc:
        raise InvalidConfig("", exc.message) from None


def config_from_mapping(cls: type[M], values: Mapping[str, Any]) -> M:
    """``cls`` built strictly from a YAML/JSON-style mapping (see the module docstring)."""
    normalized = _message(cls, values, "")
    try:
        return cls.from_dict(normalized)
    except (KeyError, ValueError, TypeError):
        # What the strict pass above did not foresee; from_dict's text may quote a value.
        raise InvalidConfig("", f"does not fit {_name(cls)}") from None


def _name(cls: type[betterproto2.Message]) -> str:
    try:
        return type_name(type_url(cls))
    except TypeError:
        return cls.__qualname__


def _info(cls: type) -> Any:
    """betterproto2's per-class field metadata (typed loosely: it is a class property)."""
    info: Any = cls._betterproto  # type: ignore[attr-defined]
    return info


def _message(cls: type[betterproto2.Message], values: object, path: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise InvalidConfig(path, f"expected a mapping ({_name(cls)})")
    info = _info(cls)
    meta = info.meta_by_field_name
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = _snake(str(key))
        where = f"{path}.{key}" if path else str(key)
        field = meta.get(name)
        if field is None:
            raise InvalidConfig(where, f"unknown field in {_name(cls)}")
        if value is None:
            continue  # YAML's null: leave the default
        if field.proto_type == "map":
            if not isinstance(value, Mapping):
                raise InvalidConfig(where, "expected a mapping")
            assert field.map_meta is not None
            value_meta = field.map_meta[1]
            value_cls = info.cls_by_field.get(f"{name}.value")
            out[name] = {
                str(k): _value(value_meta.proto_type, value_cls, v, f"{where}.{k}")
                for k, v in value.items()
            }
        elif field.repeated:
            if not isinstance(value, list):
                raise InvalidConfig(where, "expected a list")
            item_cls = info.cls_by_field.get(name)
            out[name] = [
                _value(field.proto_type, item_cls, item, f"{where}[{i}]")
                for i, item in enumerate(value)
            ]
        else:
            out[name] = _value(field.proto_type, info.cls_by_field.get(name), value, where)
    return out


def _value(proto_type: str, cls: object, value: object, path: str) -> object:
    if proto_type in _INT_RANGES:
        number = _integer(value, path)
        low, high = _INT_RANGES[proto_type]
        if not low <= number <= high:
            raise InvalidConfig(path, f"out of range for {proto_type}")
        return number
    if proto_type == "bool":
        if not isinstance(value, bool):
            raise InvalidConfig(path, "expected true or false")
        return value
    if proto_type == "string":
        if not isinstance(value, str):
            raise InvalidConfig(path, "expected a string")
        return value
    if proto_type in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidConfig(path, "expected a number")
        return float(value)
    if proto_type == "message" and isinstance(cls, type) and issubclass(cls, betterproto2.Message):
        if cls.__module__.endswith("google.protobuf"):
            return value  # well-known types have their own JSON forms
        return _message(cls, value, path)
    return value  # bytes (base64), enums (names or numbers): from_dict checks them


def _integer(value: object, path: str) -> int:
    # YAML numbers reach us through a protobuf Struct, i.e. as floats: 10 arrives as 10.0.
    if isinstance(value, bool):
        raise InvalidConfig(path, "expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)  # proto JSON writes 64-bit integers as strings
    raise InvalidConfig(path, "expected an integer")


def _snake(name: str) -> str:
    """Proto JSON names (``maxKeys``) to field names (``max_keys``)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
