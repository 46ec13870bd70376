"""The base of every config section, and the one way validation errors are reported.

A pydantic ``ValidationError`` becomes a :class:`ConfigError` whose lines each name the field by
its path as the operator wrote it (``namespaces[1].plugin.mode: ...``). Input values are never
copied into a message, except where the value is a name the operator chose (a mode, an address):
a credential, or anything that might be one, must not reach a log through an error.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

__all__ = ["ConfigError", "FieldError", "Model", "errors_of"]


class ConfigError(ValueError):
    """The configuration is invalid. Each of ``errors`` names its field's path."""

    def __init__(self, *errors: str) -> None:
        self.errors: tuple[str, ...] = errors
        super().__init__("\n".join(errors))


class FieldError(ValueError):
    """Raised by a section's own checks about one of its fields (the path is completed from
    where pydantic was when the check ran)."""

    def __init__(self, field: str | int | Sequence[str | int], message: str) -> None:
        self.field: tuple[str | int, ...] = (
            (field,) if isinstance(field, str | int) else tuple(field)
        )
        self.message = message
        super().__init__(message)


# What pydantic's error types mean in this file's words (pydantic's own messages say "Input
# should be a valid dictionary or instance of AdminConfig"; an operator wrote YAML).
_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "int_parsing": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number (not NaN or infinity)",
    "dict_type": "expected a mapping",
    "mapping_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "iterable_type": "expected a list",
}


def _path(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "config"


def _describe(error: ErrorDetails) -> tuple[list[str | int], str]:
    loc = list(error["loc"])
    if len(loc) >= 2 and loc[-1] == "[key]":
        # A mapping's key is wrong: name the key itself ("config.1", not "config[1]").
        _, message = _describe_at(error, loc)
        if message == "expected a string":
            message = "field names must be strings"
        return [*loc[:-2], str(loc[-2])], message
    return _describe_at(error, loc)


def _describe_at(error: ErrorDetails, loc: list[str | int]) -> tuple[list[str | int], str]:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldError):
        return loc + list(cause.field), cause.message
    if kind == "literal_error":
        value = error.get("input")
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "the value"
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return loc, f"{shown} is not one of {expected}"
    if kind in _MESSAGES:
        return loc, _MESSAGES[kind]
    message = error["msg"]
    # Our own checks raise ValueError("..."), which pydantic reports as "Value error, ...".
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return loc, message


def errors_of(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    """One ``path: message`` line per error (pydantic's order: the document's)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=True):
        loc, message = _describe(error)
        lines.append(f"{_path([*prefix, *loc])}: {message}")
    return lines


def _admits_none(field: FieldInfo) -> bool:
    annotation = field.annotation
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


class Model(BaseModel):
    """A config section: frozen, unknown fields are errors, no NaN or infinity anywhere.

    Sections may be built in code, positionally in field order or by keyword, as the
    dataclasses they replace were: ``NamespaceConfig("kv", PluginConfig("memstore"))``. Building
    one validates it (a :class:`ConfigError` otherwise), like reading it from a file.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_default=False,
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    def __init__(self, /, *args: Any, **data: Any) -> None:
        fields = list(type(self).model_fields)
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} positional fields")
        for name, value in zip(fields, args, strict=False):
            if name in data:
                raise TypeError(f"{type(self).__name__}: {name!r} given twice")
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(*errors_of(exc)) from None

    # Tell pydantic this __init__ only forwards to its own, so validating a document does not
    # go through it (which would drop the validation context that carries the file's
    # directory to nested sections). tests/config/test_model.py guards this.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # YAML writes an empty section (`config:` with its entries commented out) as null: for a
        # field that cannot be null, that means "not given" (its default, or "required").
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            key: value
            for key, value in data.items()
            if value is not None or key not in fields or _admits_none(fields[key])
        }

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated like the original (``dataclasses.replace``)."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        try:
            copy = type(self).model_validate(data)
        except ValidationError as exc:
            raise ConfigError(*errors_of(exc)) from None
        if self.__pydantic_private__:
            copy.__pydantic_private__ = dict(self.__pydantic_private__)
        return copy
