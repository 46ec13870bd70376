"""The warm-up a plugin process does before its handshake (prism/sdk/_warmup.py): the first
calls of a fresh process, a warm standby's Initialize after a crash above all, find nothing left
to import or build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import betterproto2
import trio
from sdk_plugins import WidgetConfig, WidgetPlugin

from prism._proto.google.protobuf import Any, ListValue, Struct, Value
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.data.v1 import GetRequest, GetResponse, SetRequest, SetResponse
from prism._proto.prism.plugin.v1 import (
    ExecuteRequest,
    ExecuteResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    InitializeRequest,
    InitializeResponse,
)
from prism.grpc.channel import open_channel
from prism.grpc.health import Health, HealthState
from prism.hosting.client import GrpcClient
from prism.sdk._warmup import message_types, warm_up
from prism.sdk.grpc_service import BackendPluginService
from prism.sdk.instance import open_plugin
from prism.sdk.plugin import BackendPlugin
from prism.sdk.typed import pack

HERE = Path(__file__).resolve().parent  # sdk_plugins, for the child


async def test_warmup_message_types_cover_protocol_config_operations_and_nested() -> None:
    async with open_plugin(WidgetPlugin()) as instance:
        services = [BackendPluginService(instance), Health(HealthState())]
        found = message_types(WidgetPlugin, services)
        assert warm_up(WidgetPlugin, services) == len(found)
    # The services' messages, the SDK's envelopes, the config, the operations' payloads, and
    # what is nested in them (Any in ExecuteRequest; Value and ListValue in Struct).
    expected = {
        InitializeRequest,
        InitializeResponse,
        HealthCheckRequest,
        HealthCheckResponse,
        ExecuteRequest,
        ExecuteResponse,
        ConfigDocument,
        WidgetConfig,
        GetRequest,
        GetResponse,
        SetRequest,
        SetResponse,
        Any,
        Struct,
        Value,
        ListValue,
    }
    assert expected <= found


@dataclass(eq=False, repr=False)
class UnencodableConfig(betterproto2.Message):
    path: str = betterproto2.field(1, betterproto2.TYPE_STRING)

    def __bytes__(self) -> bytes:
        raise RuntimeError("this message cannot be encoded")


class UnwarmablePlugin(BackendPlugin):
    name = "unwarmable"
    config_type = UnencodableConfig


def test_warmup_skips_a_type_that_fails_and_warms_the_rest() -> None:
    found = message_types(UnwarmablePlugin)
    assert UnencodableConfig in found

    # Not warm is all it is: a warm-up never stops a plugin from serving.
    assert warm_up(UnwarmablePlugin) == len(found) - 1


CHILD = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    import trio
    from prism.sdk.runner import serve_plugin
    from sdk_plugins import WidgetPlugin

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_plugin(
                    WidgetPlugin(),
                    unix_socket=Path(sys.argv[1]),
                    freeze_gc=True,
                    task_status=task_status,
                )
            )
            before = set(sys.modules)
            print("ready", gc.get_freeze_count(), flush=True)
        # serve_plugin returned: Shutdown was answered.
        print(json.dumps(sorted(set(sys.modules) - before)), flush=True)

    trio.run(main)
    """
)


class Lines:
    """Lines of a child's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def readline(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some()
            assert data, "the child closed its stdout"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def test_warmup_a_served_plugin_imports_nothing_on_its_first_calls_and_is_frozen(
    tmp_path: Path,
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    socket_path = tmp_path / "plugin.sock"
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    child = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(socket_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    try:
        assert child.stdout is not None
        out = Lines(child.stdout)
        with trio.fail_after(60):
            ready, frozen = (await out.readline()).split()
            assert ready == "ready"
            # freeze_gc: what start-up made is out of the collector's way (gc.freeze).
            assert int(frozen) > 0
            async with open_channel("unix:" + str(socket_path)) as channel:
                client = GrpcClient(channel)
                config = ConfigDocument(values=Struct.from_dict({"path": "/data"}))
                response = await client.initialize(
                    InitializeRequest(
                        namespace="n", config=pack(config), credentials={"password": "p"}
                    )
                )
                assert response.success, response.error
                await client.health_check()
                request = ExecuteRequest(operation="set", typed_params=pack(SetRequest("k", b"v")))
                answer = ExecuteResponse.parse(await client.execute(bytes(request)))
                assert answer.success, answer.error
                await client.shutdown(1.0, "test over")
            imported = json.loads(await out.readline())
            assert await child.wait() == 0
    finally:
        child.kill()
    # Before the warm-up, the first message parsed imported pydantic.dataclasses and ~30
    # modules with it, on the Initialize a standby answers after a crash.
    assert imported == []
