from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from prism.plugin_protocol.handshake import (
    ENV_MAGIC_COOKIE,
    ENV_PROTOCOL_VERSIONS,
    MAGIC_COOKIE,
    Handshake,
    HandshakeError,
    check_magic_cookie,
    handshake_line,
    log_level_name,
    negotiate_protocol_version,
    parse_handshake,
    plugin_log_level,
)

SOCKET = "/tmp/prism-fake-x1/plugin-1.sock"


def test_parse_handshake_reads_every_field() -> None:
    handshake = parse_handshake(f"PRISM|1|1|unix|{SOCKET}|grpc\n")

    assert handshake == Handshake(1, 1, "unix", SOCKET, "grpc")
    assert handshake.socket_path == Path(SOCKET)


def test_parse_handshake_accepts_crlf() -> None:
    assert parse_handshake(f"PRISM|1|1|unix|{SOCKET}|grpc\r\n").address == SOCKET


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("PRISM|1|1|unix|/s.sock", "expected PRISM|<core version>"),
        (f"PRISM|1|1|unix|{SOCKET}|grpc|extra", "expected PRISM|<core version>"),
        (f"GOPLUGIN|1|1|unix|{SOCKET}|grpc", "malformed"),
        (f"PRISM|one|1|unix|{SOCKET}|grpc", "decimal integers"),
        (f"PRISM|1|-1|unix|{SOCKET}|grpc", "decimal integers"),
        (f"PRISM|1|1|tcp|{SOCKET}|grpc", "network 'tcp' is not supported"),
        ("PRISM|1|1|unix|plugin.sock|grpc", "is not absolute"),
        (f"PRISM|1|1|unix|{SOCKET}|netrpc", "protocol 'netrpc' is not supported"),
        ("", "malformed"),
    ],
)
def test_parse_handshake_rejects_malformed_line(line: str, complaint: str) -> None:
    with pytest.raises(HandshakeError, match="handshake") as caught:
        parse_handshake(line)

    assert complaint in str(caught.value)


def test_parse_handshake_rejects_unknown_core_version_naming_both() -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_handshake(f"PRISM|2|1|unix|{SOCKET}|grpc")

    assert "core protocol version 2" in str(caught.value)
    assert "core protocol version 1" in str(caught.value)


def test_parse_handshake_rejects_protocol_version_not_offered() -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_handshake(f"PRISM|1|3|unix|{SOCKET}|grpc", offered_versions=(1, 2))

    assert "plugin protocol version 3" in str(caught.value)
    assert "offered only 1,2" in str(caught.value)


def test_parse_handshake_accepts_any_offered_version() -> None:
    assert (
        parse_handshake(f"PRISM|1|2|unix|{SOCKET}|grpc", offered_versions=(1, 2)).protocol_version
        == 2
    )


def test_handshake_line_round_trips_through_parse() -> None:
    line = handshake_line(Path(SOCKET), 1)

    assert line == f"PRISM|1|1|unix|{SOCKET}|grpc"
    assert parse_handshake(line).socket_path == Path(SOCKET)


def test_handshake_line_refuses_path_that_would_break_the_format() -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        handshake_line("/tmp/a|b.sock", 1)


def test_negotiate_protocol_version_picks_highest_common() -> None:
    environ = {ENV_PROTOCOL_VERSIONS: "1, 2,3"}

    assert negotiate_protocol_version([1, 2], environ) == 2


def test_negotiate_protocol_version_exits_explaining_when_none_match() -> None:
    stderr = io.StringIO()

    with pytest.raises(SystemExit) as caught:
        negotiate_protocol_version([2], {ENV_PROTOCOL_VERSIONS: "1"}, stderr=stderr)

    assert caught.value.code == 1
    assert "implements plugin protocol versions 2, but the proxy offered 1" in stderr.getvalue()


def test_check_magic_cookie_accepts_proxy_launch() -> None:
    check_magic_cookie({ENV_MAGIC_COOKIE: MAGIC_COOKIE})


def _run_plugin_entry_point(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "from prism.plugin_protocol.handshake import check_magic_cookie\n"
        "check_magic_cookie()\n"
        "print('serving')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


def test_check_magic_cookie_explains_and_exits_1_when_run_by_hand() -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_MAGIC_COOKIE}

    result = _run_plugin_entry_point(env)

    assert result.returncode == 1
    assert "This binary is a Prism plugin. It is not meant to be executed directly" in result.stderr
    assert "the Prism proxy launches it" in result.stderr
    assert "serving" not in result.stdout


def test_check_magic_cookie_lets_proxy_launch_through() -> None:
    result = _run_plugin_entry_point({**os.environ, ENV_MAGIC_COOKIE: MAGIC_COOKIE})

    assert result.returncode == 0
    assert result.stdout == "serving\n"


WATCHER = """
import trio
from prism.plugin_protocol.handshake import watch_parent

async def main():
    print("watching", flush=True)
    await watch_parent()
    print("parent gone", flush=True)

trio.run(main)
"""


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


async def test_watch_parent_returns_when_proxy_end_of_stdin_closes() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WATCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    with trio.fail_after(10):
        try:
            assert await _read_line(process.stdout) == b"watching\n"
            await trio.sleep(0.3)
            assert process.poll() is None  # still watching while the pipe is open

            await process.stdin.aclose()

            assert await process.wait() == 0
            assert await _read_line(process.stdout) == b"parent gone\n"
        finally:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("level", "name"), [(10, "DEBUG"), (15, "DEBUG"), (20, "INFO"), (35, "WARNING"), (1, "DEBUG")]
)
def test_log_level_name_is_the_standard_level_at_or_below(level: int, name: str) -> None:
    assert log_level_name(level) == name


@pytest.mark.parametrize(
    ("value", "level"),
    [("DEBUG", "debug"), (" warning ", "warning"), ("", "info"), ("verbose", "info")],
)
def test_plugin_log_level_reads_the_proxys_level(value: str, level: str) -> None:
    assert plugin_log_level({"PRISM_PLUGIN_LOG_LEVEL": value}) == level
    assert plugin_log_level({}) == "info"
