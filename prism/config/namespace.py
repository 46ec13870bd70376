"""A namespace: its name, its plugin, the plugin's own config, and its credentials."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from prism.config._model import FieldError, Model
from prism.config._types import Text, base_of
from prism.config.auth import AccessConfig
from prism.config.plugin import PluginConfig
from prism.config.secrets import absolute_file_references, parse_credential
from prism.config.traffic import TrafficConfig

__all__ = ["NamespaceConfig"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,62}\Z")
# A protobuf Struct carries numbers as doubles: larger integers would arrive changed.
_EXACT_INT = 2**53


def _check_document(value: Any, path: tuple[str | int, ...]) -> None:
    """Plugin config travels as a protobuf Struct (JSON's data model): say where it does not
    fit, not what the value was."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _EXACT_INT:
            raise FieldError(path, "integer too large to pass exactly (quote it as a string)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(path, "expected a finite number (not NaN or infinity)")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_document(item, (*path, i))
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FieldError(path, "field names must be strings")
            _check_document(item, (*path, key))
        return
    raise FieldError(
        path,
        f"a YAML {type(value).__name__} cannot be passed to a plugin: use a string, number, "
        "boolean, list or mapping (quote dates and times)",
    )


class NamespaceConfig(Model):
    """A namespace clients address, served by one plugin."""

    name: Text
    """Lowercase letters, digits, '-', '_', '.' (up to 63); unique in the file."""
    plugin: PluginConfig
    """The plugin that serves it."""
    config: Mapping[str, Any] = {}
    """The plugin's own configuration, sent in Initialize and converted to its config message
    (unknown fields are errors). Relative paths in it are relative to the config file."""
    credentials: Mapping[str, Text] = Field(default={}, repr=False)
    """Sent to the plugin in Initialize, never logged. Values are text that may hold
    {{ env:NAME }}, {{ file:PATH }} and {{ secret:NAME }} references, resolved at each
    instance start."""
    access: AccessConfig = AccessConfig()
    """Who may call which operations here."""
    traffic: TrafficConfig = TrafficConfig()
    """Rate limits, concurrency limit, circuit breaker, default deadline."""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} is not a valid namespace name (lowercase letters, digits, '-', '_', "
                "'.'; at most 63, starting with a letter or digit)"
            )
        return name

    @field_validator("config")
    @classmethod
    def _config(cls, config: Mapping[str, Any]) -> Mapping[str, Any]:
        for key, value in config.items():
            _check_document(value, (key,))
        return config

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, credentials: Mapping[str, str], info: ValidationInfo) -> dict[str, str]:
        base = base_of(info)
        checked: dict[str, str] = {}
        for key, value in credentials.items():
            try:
                parse_credential(value)
            except ValueError as exc:
                raise FieldError(key, str(exc)) from None
            checked[key] = value if base is None else absolute_file_references(value, base)
        return checked
