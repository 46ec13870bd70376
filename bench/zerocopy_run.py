"""Driving raw chunks through a proxy and a sidecar ``rawbytes`` plugin (bench/servers).

Shared by tests/proxy/test_frontdoor_zerocopy.py (copies per chunk, bounded memory) and the
`zerocopy` bench suite (throughput, peak RSS): a proxy process (:mod:`bench.servers.counted_proxy`)
serving one sidecar namespace, and the calls a client makes to it, as bytes built by hand
(``raw_params`` is field 3 of ExecuteRequest and StreamRequest, ``namespace`` field 15).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.copycount import Copies
from prism import grpc as pg
from prism.grpc.wire.framing import Pieces
from prism.protowire import encode_varint

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "raw"
PLUGIN = "bench.servers.rawbytes_plugin:RawBytes"
EXECUTE = "/prism.proxy.v1.DataProxy/Execute"
EXECUTE_STREAM = "/prism.proxy.v1.DataProxy/ExecuteStream"


def envelope(operation: str, params: bytes, *, namespace: str = NAMESPACE) -> Pieces:
    """An ExecuteRequest / StreamRequest (the same fields) with ``raw_params``: its fields
    before the params, and the params, as the two pieces of one message (sent without a join)."""
    head = bytearray()
    if operation:
        head += b"\x0a" + encode_varint(len(operation)) + operation.encode()
    if namespace:
        head += b"\x7a" + encode_varint(len(namespace)) + namespace.encode()
    head += b"\x1a" + encode_varint(len(params))
    return Pieces(bytes(head), params)


def raw_result(response: bytes, field: int) -> bytes:
    """The ``raw_result`` of a response (ExecuteResponse: field 5; StreamResponse: 2)."""
    from prism import protowire

    value = protowire.scan(response, frozenset({field})).get(field, b"")
    assert isinstance(value, bytes), value
    return value


def write_config(directory: Path, *, max_message_size: int = 16 << 20) -> Path:
    config = {
        "listen": "127.0.0.1:0",
        "admin": {"enabled": False, "listen": None},
        "shutdown_grace": 2.0,
        "max_message_size": max_message_size,
        "namespaces": [
            {
                "name": NAMESPACE,
                "plugin": {
                    "name": PLUGIN,
                    "mode": "sidecar",
                    "health_interval": 3600,
                },
                "access": {"anonymous": True},
            }
        ],
    }
    path = directory / "zerocopy.json"
    path.write_text(json.dumps(config))
    return path


@dataclass
class ProxyProcess:
    process: trio.Process
    address: str
    report: Path
    _lines: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start_counting(self) -> None:
        self.process.send_signal(signal.SIGUSR1)
        line = await self._lines.__anext__()
        assert line == "counting", line

    async def stop_counting(self) -> Copies:
        self.process.send_signal(signal.SIGUSR2)
        line = await self._lines.__anext__()
        assert line == "reported", line
        return Copies.from_dict(json.loads(self.report.read_text()))


async def _read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            yield line.decode().strip()
        data = await stream.receive_some()
        if not data:
            return
        buffer += data


@asynccontextmanager
async def proxy_process(
    directory: Path, *, max_message_size: int = 16 << 20, python: str = sys.executable
) -> AsyncIterator[ProxyProcess]:
    """The proxy, serving ``raw`` with the rawbytes sidecar, started and ready; SIGTERM after."""
    config = write_config(directory, max_message_size=max_message_size)
    report = directory / "proxy-copies.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = (directory / "proxy.log").open("wb")
    process = await trio.lowlevel.open_process(
        [
            python,
            "-m",
            "bench.servers.counted_proxy",
            "--config",
            str(config),
            "--report",
            str(report),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        cwd=str(ROOT),
    )
    try:
        assert process.stdout is not None
        lines = _read_lines(process.stdout)
        line = await lines.__anext__()
        assert line.startswith("listening "), (line, (directory / "proxy.log").read_text())
        yield ProxyProcess(process, line.split()[1], report, lines)
    finally:
        with trio.move_on_after(10) as waited:
            waited.shield = True
            process.send_signal(signal.SIGTERM)
            await process.wait()
        if process.returncode is None:
            process.kill()
        log.close()


async def plugin_pid(channel: pg.Channel) -> int:
    """The pid of the plugin process serving the namespace (the host keeps a warm standby
    beside it: another child of the proxy)."""
    return int(await execute(channel, "pid", b""))


async def execute(channel: pg.Channel, operation: str, params: bytes) -> bytes:
    response: bytes = await channel.unary_unary(EXECUTE, envelope(operation, params), bytes)
    return raw_result(response, 5)


async def sink(channel: pg.Channel, chunk: bytes, count: int) -> bytes:
    """One ExecuteStream: ``count`` requests of ``chunk`` to ``sink``; its one answer."""
    first = envelope("sink", chunk)
    later = envelope("", chunk, namespace="")
    async with channel.stream(EXECUTE_STREAM, bytes) as call:
        await call.send_message(first)
        for _ in range(count - 1):
            await call.send_message(later)
        await call.end()
        answers = [raw_result(m, 2) async for m in call]
    return answers[0]


async def source(channel: pg.Channel, size: int, count: int) -> int:
    """One ExecuteStream from ``source``: ``count`` chunks of ``size``; the bytes received."""
    total = 0
    async with channel.stream(EXECUTE_STREAM, bytes) as call:
        await call.send_message(envelope("source", f"{count}:{size}".encode()))
        await call.end()
        async for message in call:
            total += len(raw_result(message, 2))
    return total


def memory(pid: int) -> tuple[int, int]:
    """``(rss, peak rss)`` of process ``pid`` in bytes (VmRSS, VmHWM of /proc/PID/status)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> None:
    """Make the peak RSS of ``pid`` its current RSS (Linux: ``5`` to /proc/PID/clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
