"""``prism config check FILE`` and ``prism config schema``: the config file without a proxy."""

from __future__ import annotations

from pathlib import Path

from prism.config import ConfigError, load_config
from prism.config.load import json_schema_text

__all__ = ["check", "schema"]


def check(path: Path) -> tuple[int, list[str]]:
    """(exit status, lines to print): 0 and a one-line summary, or 1 and one line per error.
    Secrets are resolved (a missing one is an error) and never printed."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return 1, list(exc.errors)
    namespaces = ", ".join(
        f"{ns.name} ({ns.plugin.name}, {ns.plugin.mode})" for ns in config.namespaces
    )
    credentials = sum(len(ns.credentials) for ns in config.namespaces)
    admin = config.admin
    listeners = [f"listen {config.listen}"]
    if admin.enabled:
        listeners += [f"admin {admin.listen}"] if admin.listen else []
        listeners += [f"admin unix:{admin.unix_socket}"] if admin.unix_socket else []
    summary = (
        f"{path}: valid: {len(config.namespaces)} namespace(s)"
        + (f" [{namespaces}]" if namespaces else "")
        + f", {credentials} credential(s) resolved, "
        + ", ".join(listeners)
    )
    return 0, [summary]


def schema() -> str:
    """The config file's JSON Schema, for editors (and for ``yaml-language-server``)."""
    return json_schema_text()
