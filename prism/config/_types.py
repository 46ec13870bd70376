"""The value types config fields are made of: strict (``"10"`` is not ``10``, ``1`` is not
``true``, ``1.5`` is not an integer), finite, and with messages in the operator's words.

``ConfigPath`` joins a relative path onto the config file's directory, which parsing passes in
pydantic's validation context (``{"base": Path}``); a section built in code has no context and
keeps its paths as given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

__all__ = [
    "Address",
    "ConfigPath",
    "Flag",
    "PositiveInt",
    "Seconds",
    "Text",
    "base_of",
    "check_address",
]


def base_of(info: ValidationInfo) -> Path | None:
    """The config file's directory, when a file (or ``parse_config(base=...)``) is being read."""
    context = info.context
    base = context.get("base") if isinstance(context, dict) else None
    return base if isinstance(base, Path) else None


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError("expected_string", "expected a string")
    return value


def _flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise PydanticCustomError("expected_bool", "expected true or false")
    return value


def _positive_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PydanticCustomError("expected_positive_int", "expected a positive integer")
    return value


def _seconds(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("expected_seconds", "expected a positive number (seconds)")
    if not math.isfinite(value):
        raise PydanticCustomError(
            "expected_seconds", "expected a positive number (seconds), not NaN or infinity"
        )
    if value <= 0:
        raise PydanticCustomError("expected_seconds", "expected a positive number (seconds)")
    return float(value)


def _path_text(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise PydanticCustomError("expected_path", "expected a path (a non-empty string)")
    return value


def _join_base(value: Path, info: ValidationInfo) -> Path:
    base = base_of(info)
    return value if base is None else base / value


def check_address(value: str) -> str | None:
    """What is wrong with ``value`` as ``host:port``, or None."""
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        return f"{value!r} is not host:port"
    return None


def _address(value: Any) -> Any:
    _text(value)
    problem = check_address(value)
    if problem:
        raise PydanticCustomError("address", problem)
    return value


# Constraints come before the validator, so they constrain the type itself (and the schema).
Text = Annotated[str, BeforeValidator(_text)]
Flag = Annotated[bool, BeforeValidator(_flag)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_positive_int)]
Seconds = Annotated[float, Field(gt=0), BeforeValidator(_seconds)]
ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_join_base)]
Address = Annotated[str, Field(pattern=r"^.+:[0-9]{1,5}$"), BeforeValidator(_address)]
