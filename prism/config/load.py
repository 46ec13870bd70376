"""Reading a config file: YAML → validated sections, with every secret resolvable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prism.config._model import ConfigError, errors_of
from prism.config.auth import AccessConfig
from prism.config.namespace import NamespaceConfig
from prism.config.plugin import PluginConfig
from prism.config.proxy import ProxyConfig

__all__ = ["default_config", "json_schema", "load_config", "load_config_text", "parse_config"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe subset, where a key given twice in one mapping is an error (PyYAML keeps the
    last one silently, which hides a field behind its misplaced twin)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def default_config(data_dir: Path = Path("prism-data")) -> ProxyConfig:
    """The embedded default: ``kv`` on memstore and ``durable`` on sqlite, both in-process,
    open to callers without credentials (``access.anonymous``): it is for trying Prism out on
    the loopback address it listens on, not for production."""
    anyone = AccessConfig(anonymous=True)
    return ProxyConfig(
        namespaces=(
            NamespaceConfig(name="kv", plugin=PluginConfig(name="memstore"), access=anyone),
            NamespaceConfig(
                name="durable",
                plugin=PluginConfig(name="sqlite"),
                config={"path": str(data_dir / "durable.sqlite3")},
                access=anyone,
            ),
        )
    )


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    """The config file at ``path``, validated; its secrets are resolved once (and dropped) so
    that a missing one fails here rather than at the first plugin start. ConfigError lists
    every problem, each naming its field."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text") from None
    return load_config_text(text, source=str(path), base=Path(path).absolute().parent)


def load_config_text(text: str, *, source: str, base: Path | None) -> ProxyConfig:
    """A config document's text (YAML, or JSON, which YAML reads), validated as
    :func:`load_config` validates a file. ``source`` names it in errors (a path, an etcd key);
    ``base``: the directory relative paths are joined onto."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        # One line, and not PyYAML's quote of the offending line (it may hold a credential).
        mark = exc.problem_mark
        where = "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
        raise ConfigError(f"{source} is not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {type(exc).__name__}") from None
    config = parse_config({} if raw is None else raw, base=base)
    config.all_credentials()
    return config


def parse_config(raw: Any, base: Path | None = None) -> ProxyConfig:
    """``raw`` (a YAML document's data) validated. ``base`` is the config file's directory:
    relative paths are joined onto it and plugins are told it (see ``config_dir``). Secret
    references are checked, not read (``load_config`` reads them too)."""
    try:
        config = ProxyConfig.model_validate(raw, context={"base": base})
    except ValidationError as exc:
        raise ConfigError(*errors_of(exc)) from None
    config._config_dir = base
    return config


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``prism config schema``)."""
    schema = ProxyConfig.model_json_schema()
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "Prism proxy configuration",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"
