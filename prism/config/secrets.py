"""Secret references in credentials, and where their values come from.

A credential is text in which ``{{ KIND:REF }}`` references stand for secrets:

- ``{{ env:NAME }}``: the proxy's environment variable NAME;
- ``{{ file:PATH }}``: the content of a file (relative to the config file's directory);
- ``{{ secret:NAME }}`` (RFC-008's form): NAME looked up in the configured sources, in order:
  ``secrets.directory/NAME`` (one file per secret, as Kubernetes and Docker mount them), then
  the environment variable ``secrets.env_prefix`` + NAME in upper case with ``-`` and ``.``
  as ``_`` (``pg-password`` → ``PRISM_SECRET_PG_PASSWORD``).

Files lose their trailing newlines. The model keeps references as written (file paths made
absolute); :func:`resolve_credentials` reads them each time it is called, so a rotated secret
is picked up by the next plugin instance start (a reload). Messages name the field, the
reference's kind and the secret's name or path, never a value: a malformed reference is not
echoed either (it may be a literal password that happens to contain ``{{``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import field_validator

from prism.config._model import ConfigError, Model
from prism.config._types import ConfigPath, Text

__all__ = [
    "DEFAULT_SECRET_ENV_PREFIX",
    "Reference",
    "SecretsConfig",
    "parse_credential",
    "resolve_credentials",
    "secret_env_name",
]

DEFAULT_SECRET_ENV_PREFIX = "PRISM_SECRET_"
KINDS = ("env", "file", "secret")

_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_KIND = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,252}\Z")


@dataclass(frozen=True)
class Reference:
    """One ``{{ kind:ref }}`` in a credential."""

    kind: str  # env | file | secret
    ref: str


def parse_credential(value: str) -> list[str | Reference]:
    """``value`` as literal text and references, in order. ValueError (naming no part of
    ``value`` but a reference's kind and name) when a reference is malformed."""
    parts: list[str | Reference] = []
    position = 0
    for match in _BRACES.finditer(value):
        parts.append(value[position : match.start()])
        parts.append(_reference(match.group(1)))
        position = match.end()
    rest = value[position:]
    if "{{" in rest:
        raise ValueError("'{{' without a closing '}}' (write secrets as {{ kind:name }})")
    parts.append(rest)
    return [part for part in parts if part != ""]


def _reference(inner: str) -> Reference:
    match = _KIND.fullmatch(inner)
    if match is None:
        raise ValueError(
            "a '{{ ... }}' that is not a secret reference ({{ env:NAME }}, {{ file:PATH }} "
            "or {{ secret:NAME }})"
        )
    kind, ref = match.group(1), match.group(2).strip()
    if kind not in KINDS:
        hint = " (kinds are lower case)" if kind.lower() in KINDS else ""
        raise ValueError(
            f"unknown secret reference kind {kind!r}{hint}: expected env, file or secret"
        )
    if kind == "env" and not _ENV_NAME.match(ref):
        raise ValueError("{{ env:... }} needs an environment variable name")
    if kind == "secret" and not _SECRET_NAME.match(ref):
        raise ValueError(
            "{{ secret:... }} needs a secret name (letters, digits, '_', '-', '.'; "
            "not starting with '.' or '-')"
        )
    if kind == "file" and not ref:
        raise ValueError("{{ file:... }} needs a path")
    return Reference(kind, ref)


def absolute_file_references(value: str, base: Path) -> str:
    """``value`` with relative ``{{ file:PATH }}`` paths joined onto ``base``."""

    def rewrite(match: re.Match[str]) -> str:
        reference = _reference(match.group(1))
        if reference.kind != "file" or Path(reference.ref).is_absolute():
            return match.group(0)
        return "{{ file:" + str(base / reference.ref) + " }}"

    return _BRACES.sub(rewrite, value)


def secret_env_name(prefix: str, name: str) -> str:
    """The environment variable ``{{ secret:name }}`` is read from."""
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


class SecretsConfig(Model):
    """Where ``{{ secret:NAME }}`` references are looked up, in this order."""

    directory: ConfigPath | None = None
    """A directory of one file per secret (a Kubernetes secret volume, Docker's /run/secrets);
    NAME is the file name. None = not used."""
    env_prefix: Text | None = DEFAULT_SECRET_ENV_PREFIX
    """Then the environment variable PREFIX + NAME (upper case, '-' and '.' as '_'); null = not
    used."""

    @field_validator("env_prefix")
    @classmethod
    def _prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None and not _ENV_NAME.match(prefix):
            raise ValueError(f"{prefix!r} cannot start an environment variable name")
        return prefix


def _read(path: Path) -> str:
    # OSError and UnicodeDecodeError pass through; the caller words them without the content.
    return path.read_bytes().decode("utf-8").rstrip("\r\n")


def _problem(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"  # its str() would quote the offending bytes
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def _lookup(
    reference: Reference, secrets: SecretsConfig, environ: Mapping[str, str]
) -> str | ValueError:
    kind, ref = reference.kind, reference.ref
    if kind == "env":
        if ref not in environ:
            return ValueError(f"environment variable {ref} is not set")
        return environ[ref]
    if kind == "file":
        try:
            return _read(Path(ref))
        except (OSError, UnicodeDecodeError) as exc:
            return ValueError(f"cannot read secret file {ref}: {_problem(exc)}")
    looked: list[str] = []
    if secrets.directory is not None:
        path = secrets.directory / ref
        try:
            return _read(path)
        except FileNotFoundError:
            looked.append(f"no file {path}")
        except (OSError, UnicodeDecodeError) as exc:
            return ValueError(f"cannot read secret {ref!r} from {path}: {_problem(exc)}")
    if secrets.env_prefix is not None:
        variable = secret_env_name(secrets.env_prefix, ref)
        if variable in environ:
            return environ[variable]
        looked.append(f"no environment variable {variable}")
    where = "; ".join(looked) if looked else "no secret sources are configured (secrets:)"
    return ValueError(f"secret {ref!r} not found ({where})")


def resolve_credentials(
    credentials: Mapping[str, str],
    secrets: SecretsConfig,
    *,
    where: str = "credentials",
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every credential with its references replaced by the secrets' current values.

    Reads files and the environment now (call it at each plugin instance start). A
    :class:`ConfigError` lists every credential that cannot be resolved, as
    ``{where}.KEY: ...``."""
    env = os.environ if environ is None else environ
    resolved: dict[str, str] = {}
    errors: list[str] = []
    for key, value in credentials.items():
        try:
            parts = parse_credential(value)
        except ValueError as exc:
            errors.append(f"{where}.{key}: {exc}")
            continue
        text: list[str] = []
        for part in parts:
            found = part if isinstance(part, str) else _lookup(part, secrets, env)
            if isinstance(found, ValueError):
                errors.append(f"{where}.{key}: {found}")
                break
            text.append(found)
        else:
            resolved[key] = "".join(text)
    if errors:
        raise ConfigError(*errors)
    return resolved
