"""The ``plugin_security`` section: what a plugin's files must satisfy before they are loaded."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationInfo, field_validator

from prism.config._model import FieldError, Model
from prism.config._types import Flag, Text, base_of

__all__ = ["PluginSecurityConfig"]

_B64_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")  # 32 raw bytes, base64


def _is_inline_key(key: str) -> bool:
    return "-----BEGIN" in key or _B64_KEY.fullmatch(key.strip()) is not None


class PluginSecurityConfig(Model):
    """Checks on a plugin's files before it is imported or launched."""

    verify_permissions: Flag = True
    """Refuse plugin files that are world-writable or owned by another user than the proxy's
    and root."""
    require_signatures: Flag = False
    """Every plugin must carry a valid ed25519 signature (<artifact>.sig) by a trusted key."""
    trusted_keys: tuple[Text, ...] = ()
    """ed25519 public keys: PEM file paths (relative to the config file), PEM text, or base64
    raw keys."""

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # A path is relative to the config file, like every other path in it (not to the
        # proxy's working directory); PEM text and base64 keys stay as they are.
        for i, key in enumerate(keys):
            if not key.strip():
                raise FieldError(i, "an empty key")
        base = base_of(info)
        if base is None:
            return keys
        return tuple(key if _is_inline_key(key) else str(base / Path(key)) for key in keys)
