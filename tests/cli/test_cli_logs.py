"""``prism serve``'s log output as an operator collects it: JSON lines on a pipe, with the
namespace, plugin and trace id of each call, a sidecar's own records forwarded with the same
fields; ``--log-format text`` and ``logging.format`` for people."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_cli_main import serving

from prism._proto.prism.proxy.v1 import ExecuteRequest, ExecuteResponse

PROXY_TESTS = Path(__file__).resolve().parents[1] / "proxy"  # trace_plugins.py
PLUGIN = "trace_plugins:MetadataEcho"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
CONFIG = f"""
namespaces:
  - name: side
    plugin: {{name: "{PLUGIN}", mode: sidecar}}
    access: {{anonymous: true}}
  - name: local
    plugin: {{name: "{PLUGIN}", mode: in_process}}
    access: {{anonymous: true}}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The proxy and its sidecar import the plugin from the tests' directory.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(PROXY_TESTS), os.environ.get("PYTHONPATH", "")])
    )
    path = tmp_path / "prism.yaml"
    path.write_text(CONFIG)
    return path


def call(port: int, namespace: str, text: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        execute = channel.unary_unary(
            "/prism.proxy.v1.DataProxy/Execute",
            request_serializer=bytes,
            response_deserializer=ExecuteResponse.parse,
        )
        request = ExecuteRequest(namespace=namespace, operation="meta", raw_params=text.encode())
        execute(request, metadata=[("traceparent", TRACEPARENT)], timeout=30)


def records(log: Path) -> list[dict[str, Any]]:
    """Every line of the output, each a JSON object (or the test fails naming the line)."""
    found = []
    for line in log.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return found


def test_cli_serve_logs_json_lines_on_a_pipe_with_each_calls_fields(
    config: Path, tmp_path: Path
) -> None:
    args = ("serve", "--config", str(config), "--log-level", "debug")
    with serving(*args, directory=tmp_path) as (_, port, log):
        call(port, "side", "from the sidecar")
        call(port, "local", "in process")
    found = records(log)  # auto: stdout is a file here, so JSON
    assert any(r["message"].startswith("prism listening on") for r in found)

    # The sidecar's own record, parsed from its JSON line: its level, logger and the trace id
    # the proxy passed; the namespace and plugin are the proxy's.
    (side,) = [r for r in found if r["message"] == "asked: from the sidecar"]
    assert side["logger"] == "prism.plugin.side"
    assert side["level"] == "WARNING"
    assert side["plugin_logger"] == "trace_plugins.backend"
    assert (side["namespace"], side["plugin"], side["plugin_stream"]) == ("side", PLUGIN, "stderr")
    assert side["trace_id"] == TRACE
    assert isinstance(side["plugin_pid"], int)
    # At the proxy's level: the sidecar's DEBUG records arrive too (--log-level debug).
    (detail,) = [r for r in found if r["message"] == "details: from the sidecar"]
    assert (detail["level"], detail["logger"], detail["trace_id"]) == (
        "DEBUG",
        "prism.plugin.side",
        TRACE,
    )

    # In-process, the plugin's record is written in the call's own context.
    (local,) = [r for r in found if r["message"] == "asked: in process"]
    assert local["logger"] == "trace_plugins.backend"
    assert (local["namespace"], local["plugin"], local["trace_id"]) == ("local", PLUGIN, TRACE)

    # The host's records about a plugin instance name it too (DEBUG: the process and its warm
    # standby started).
    started = [r for r in found if r["message"].startswith("plugin side started as pid")]
    assert started
    assert all((r["namespace"], r["plugin"]) == ("side", PLUGIN) for r in started)


def test_cli_serve_log_format_text_and_config_format(config: Path, tmp_path: Path) -> None:
    with serving("serve", "--config", str(config), "--log-format", "text", directory=tmp_path) as (
        _,
        port,
        log,
    ):
        call(port, "local", "as text")
    text = log.read_text()
    assert not text.lstrip().startswith("{")
    shown = f"WARNING trace_plugins.backend: asked: as text [namespace=local plugin={PLUGIN} "
    assert shown + f"trace_id={TRACE} span_id=" in text

    config.write_text("logging: {format: text, level: warning}\n" + CONFIG)
    with serving("serve", "--config", str(config), directory=tmp_path) as (_, port, log):
        call(port, "local", "config says text")
    text = log.read_text()
    assert "WARNING trace_plugins.backend: asked: config says text [namespace=local" in text
    assert "prism listening" not in text  # INFO: below the config's level
