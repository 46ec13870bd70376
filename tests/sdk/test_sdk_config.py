"""prism.sdk.config: strict conversion of the operator's YAML mapping into a config message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sdk_plugins import WidgetConfig

from prism._proto.google.protobuf import Struct
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.data.v1 import GetRequest
from prism.sdk import InvalidArgument, InvalidConfig, pack
from prism.sdk.config import config_dir_from_any, config_from_any, config_from_mapping


def test_config_from_mapping_builds_the_message() -> None:
    config = config_from_mapping(
        WidgetConfig,
        {
            "path": "/d",
            "limit": 10.0,  # YAML numbers arrive through a Struct as floats
            "ratio": 1,
            "verbose": True,
            "tags": ["a", "b"],
            "labels": {"env": "prod"},
            "size": "18446744073709551615",  # proto JSON spells 64-bit integers as strings
        },
    )
    assert config == WidgetConfig(
        path="/d",
        limit=10,
        ratio=1.0,
        verbose=True,
        tags=["a", "b"],
        labels={"env": "prod"},
        size=2**64 - 1,
    )


def test_config_from_mapping_accepts_json_names_and_nulls() -> None:
    assert config_from_mapping(WidgetConfig, {"Path": "/d", "limit": None}) == WidgetConfig(
        path="/d"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pth": "/d"}, r"^config\.pth: unknown field in test\.widget\.v1\.WidgetConfig$"),
        ({"limit": 1.5}, r"^config\.limit: expected an integer$"),
        ({"limit": True}, r"^config\.limit: expected an integer, got a boolean$"),
        ({"limit": "ten"}, r"^config\.limit: expected an integer$"),
        ({"limit": 2**31}, r"^config\.limit: out of range for int32$"),
        ({"size": -1}, r"^config\.size: out of range for uint64$"),
        ({"path": 5}, r"^config\.path: expected a string$"),
        ({"verbose": "yes"}, r"^config\.verbose: expected true or false$"),
        ({"ratio": "fast"}, r"^config\.ratio: expected a number$"),
        ({"tags": "a"}, r"^config\.tags: expected a list$"),
        ({"tags": ["a", 1]}, r"^config\.tags\[1\]: expected a string$"),
        ({"labels": ["a"]}, r"^config\.labels: expected a mapping$"),
        ({"labels": {"k": 1}}, r"^config\.labels\.k: expected a string$"),
    ],
)
def test_config_from_mapping_is_strict(values: dict[str, Any], message: str) -> None:
    # Every message names the field as config.FIELD: the proxy reports it as
    # namespaces[N].config.FIELD, a path in its config file.
    with pytest.raises(InvalidConfig) as info:
        config_from_mapping(WidgetConfig, values)
    assert re.search(message, info.value.message), info.value.message


def test_config_errors_never_echo_values() -> None:
    with pytest.raises(InvalidArgument) as info:
        config_from_mapping(WidgetConfig, {"limit": "s3cr3t-token"})
    assert "s3cr3t" not in info.value.message


def document(values: dict[str, Any]) -> Any:
    return pack(ConfigDocument(values=Struct.from_dict(values)))


def test_config_from_any_converts_a_config_document() -> None:
    assert config_from_any(document({"path": "/d"}), WidgetConfig) == WidgetConfig(path="/d")


def test_config_from_any_uses_the_plugins_own_type_as_is() -> None:
    assert config_from_any(pack(WidgetConfig(limit=2)), WidgetConfig) == WidgetConfig(limit=2)


def test_config_from_any_absent_or_empty_document_is_none() -> None:
    assert config_from_any(None, WidgetConfig) is None
    assert config_from_any(pack(ConfigDocument()), WidgetConfig) is None
    assert config_from_any(document({}), None) is None


def test_config_from_any_wrong_type_names_expected() -> None:
    with pytest.raises(InvalidArgument, match=r"config: expected test\.widget\.v1\.WidgetConfig"):
        config_from_any(pack(GetRequest()), WidgetConfig)


def test_config_from_any_for_a_plugin_without_config() -> None:
    with pytest.raises(InvalidArgument, match=r"takes no config, got fields \['path'\]"):
        config_from_any(document({"path": "/d"}), None)


def test_config_invalid_config_names_the_field_path() -> None:
    assert InvalidConfig("path", "required").message == "config.path: required"
    assert InvalidConfig(("hosts", 2, "port"), "expected an integer").message == (
        "config.hosts[2].port: expected an integer"
    )
    assert InvalidConfig("", "required").message == "config: required"
    assert isinstance(InvalidConfig("x", "y"), InvalidArgument)


def test_config_dir_travels_in_the_config_document() -> None:
    with_dir = pack(ConfigDocument(values=Struct.from_dict({"path": "d"}), base_dir="/etc/prism"))
    assert config_dir_from_any(with_dir) == Path("/etc/prism")
    assert config_dir_from_any(document({"path": "d"})) is None
    assert config_dir_from_any(pack(WidgetConfig(path="d"))) is None
    assert config_dir_from_any(None) is None


def test_config_from_any_malformed_document_is_invalid_argument() -> None:
    # ConfigDocument.values (1) → Struct.fields (1) → an entry whose key is cut short.
    entry = b"\x0a\x05ab"
    fields = b"\x0a" + bytes([len(entry)]) + entry
    values = b"\x0a" + bytes([len(fields)]) + fields
    config = pack(ConfigDocument())
    config.value = values
    with pytest.raises(InvalidArgument) as info:
        config_from_any(config, WidgetConfig)
    assert info.value.message == (
        "config: expected prism.config.v1.ConfigDocument, got malformed bytes: field 1 (values): "
        "field 1 (fields): field 1 (key) runs past the end of its message"
    )
