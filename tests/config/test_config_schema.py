"""The config file's JSON Schema and the user guide's configuration reference cannot drift: every
field in the schema is in the reference with its default, and the reference names no field the
schema lacks. The reference's example is a valid file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from prism.config import json_schema, parse_config

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"
REQUIRED = object()


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` followed and a nullable ``anyOf`` reduced to its other arm."""
    if "anyOf" in node:
        arms = [arm for arm in node["anyOf"] if arm.get("type") != "null"]
        if len(arms) == 1:
            node = {**arms[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    ref = node.get("$ref")
    if ref:
        target = schema["$defs"][ref.rsplit("/", 1)[1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_fields(
    schema: dict[str, Any], node: dict[str, Any] | None = None, prefix: str = ""
) -> dict[str, Any]:
    """Every field path (``namespaces[].plugin.mode``) → its default, or REQUIRED. A section
    that has a default of its own (``admin``) is not listed itself: its fields are."""
    node = schema if node is None else node
    required = set(node.get("required", ()))
    found: dict[str, Any] = {}
    for name, raw in node.get("properties", {}).items():
        path = prefix + name
        field = _resolve(schema, raw)
        section = "properties" in field
        default = REQUIRED if name in required else raw.get("default")
        if not (section and isinstance(default, dict)):
            found[path] = default
        if section:
            found.update(schema_fields(schema, field, path + "."))
        items = _resolve(schema, field.get("items", {}))
        if field.get("type") == "array" and "properties" in items:
            found.update(schema_fields(schema, items, path + "[]."))
    return found


def guide_fields(text: str) -> dict[str, str]:
    """Every field the reference's tables name → its default cell. A table under a heading
    with a backticked name (``### `namespaces[]` ``) holds fields of that name."""
    fields: dict[str, str] = {}
    reference = text[text.index("## Configuration reference") :]
    prefix = ""
    in_table = False
    for line in reference.splitlines():
        if line.startswith("#"):
            named = re.search(r"`([^`]+)`", line)
            prefix = named.group(1) + "." if named else ""
            in_table = False
        elif line.startswith("| field | type | default | meaning |"):
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            assert len(cells) == 4, line
            assert cells[1], f"no type: {line}"
            assert cells[3], f"no meaning: {line}"
            for name in re.findall(r"`([^`]+)`", cells[0]):
                assert prefix + name not in fields, f"{prefix}{name} is listed twice"
                fields[prefix + name] = cells[2]
        elif not line.startswith("|"):
            in_table = False
    return fields


def default_text(default: Any) -> str:
    """How the reference writes a default: ``none``, ``required``, or the YAML value in
    backticks (``5``, not ``5.0``)."""
    if default is REQUIRED:
        return "required"
    if default is None:
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    if isinstance(default, list | dict):
        return f"`{yaml.safe_dump(default, default_flow_style=True).strip()}`"
    return f"`{default}`"


def test_config_schema_every_field_is_in_the_reference_with_its_default() -> None:
    schema = schema_fields(json_schema())
    guide = guide_fields(GUIDE.read_text())
    assert sorted(set(schema) - set(guide)) == [], "fields missing from the user guide"
    assert sorted(set(guide) - set(schema)) == [], "the user guide names fields the schema lacks"
    wrong = {
        path: (guide[path], default_text(default))
        for path, default in schema.items()
        if not guide[path].startswith(default_text(default))
    }
    assert wrong == {}, "defaults in the user guide (as written, as the schema has them)"


def test_config_schema_walk_finds_nested_fields() -> None:
    # The walk itself, so the test above cannot pass by finding nothing.
    fields = schema_fields(json_schema())
    assert fields["namespaces[].plugin.tls.ca"] is REQUIRED
    assert fields["namespaces[].plugin.health_interval"] == 5.0
    assert fields["admin.listen"] == "127.0.0.1:50052"
    assert fields["namespaces"] == []
    assert "admin" not in fields
    assert fields["tls"] is None
    assert len(fields) > 35


def test_config_schema_fields_have_descriptions_for_editors() -> None:
    schema = json_schema()
    for name, section in [("ProxyConfig", schema), *schema["$defs"].items()]:
        for field, spec in section.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_config_schema_reference_example_is_a_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    text = GUIDE.read_text()
    reference = text[text.index("## Configuration reference") :]
    example = reference[reference.index("```yaml\n") + 8 :]
    example = example[: example.index("```")]
    config = parse_config(yaml.safe_load(example), base=Path("/etc/prism"))
    names = [ns.name for ns in config.namespaces]
    assert names == ["sessions", "orders", "partner"]
    assert config.namespace("orders").plugin.env == {"LOG_FORMAT": "json"}
    monkeypatch.setenv("PRISM_SECRET_PARTNER_TOKEN", "t")
    monkeypatch.setenv("PARTNER_PASSWORD", "p")
    assert config.resolve_credentials(config.namespace("partner")) == {
        "api_token": "t",
        "basic_auth": "proxy:p",
    }
