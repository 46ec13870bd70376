"""``prism.serve``: the whole proxy in the test's own nursery, reached over a real socket with
``prism.client``; stopped with ``proxy.stop()`` or by cancelling the nursery."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import prism
import prism.client
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig, load_config

# The probe plugin (client_plugins:ProbePlugin) lives with the client tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

YAML = """\
listen: 127.0.0.1:0
shutdown_grace: 30
admin: {enabled: false}
namespaces:
  - name: kv
    plugin: {name: memstore}
  - name: probe
    plugin: {name: "client_plugins:ProbePlugin"}
"""


def in_code(**overrides: object) -> ProxyConfig:
    settings: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "admin": AdminConfig(enabled=False, listen=None),
        "shutdown_grace": 30.0,
        "namespaces": (
            NamespaceConfig(name="kv", plugin=PluginConfig(name="memstore")),
            NamespaceConfig(name="probe", plugin=PluginConfig(name="client_plugins:ProbePlugin")),
        ),
    }
    settings.update(overrides)
    return ProxyConfig(**settings)  # type: ignore[arg-type]


async def round_trip(address: str) -> bytes:
    async with prism.client.connect(address) as client:
        kv = client.keyvalue("kv")
        await kv.set("greeting", b"hello")
        return (await kv.get("greeting")).value


async def test_serve_config_in_code_until_stop() -> None:
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(prism.serve, in_code())
        assert isinstance(proxy, prism.RunningProxy)
        host, _, port = proxy.address.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        assert await round_trip(proxy.address) == b"hello"
        assert not proxy.stopped
        await proxy.stop()
        assert proxy.stopped
        # The nursery now ends by itself: serve returned.
    with pytest.raises(prism.client.Unavailable):
        await round_trip(proxy.address)


@pytest.mark.parametrize("how", ["path", "load_config"])
async def test_serve_config_from_yaml(tmp_path: Path, how: str) -> None:
    path = tmp_path / "prism.yaml"
    path.write_text(YAML)
    config = path if how == "path" else load_config(path)
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(prism.serve, config)
        assert proxy.config.shutdown_grace == 30
        assert await round_trip(proxy.address) == b"hello"
        await proxy.stop()


async def test_serve_cancelled_stops_gracefully(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling the nursery lets a call in flight finish (within shutdown_grace), and only
    then is the proxy gone."""
    async with trio.open_nursery() as outer:
        serving = trio.CancelScope()
        started: trio.MemorySendChannel[prism.RunningProxy]
        started, receive = trio.open_memory_channel[prism.RunningProxy](1)

        async def run_proxy() -> None:
            with serving:
                async with trio.open_nursery() as nursery:
                    started.send_nowait(await nursery.start(prism.serve, in_code()))

        outer.start_soon(run_proxy)
        proxy = await receive.receive()
        async with prism.client.connect(proxy.address) as client:
            results: list[bytes] = []

            async def slow_call() -> None:
                results.append(await client.execute("probe", "slow", b"5", bytes))

            outer.start_soon(slow_call)
            with trio.fail_after(60):
                # (polled through the API: the plugin's state is in the proxy)
                while b"slow started" not in await client.execute(  # noqa: ASYNC110
                    "probe", "events", b"", bytes
                ):
                    await trio.sleep(0.1)
            serving.cancel()
            with trio.fail_after(60):
                while not proxy.stopped:  # noqa: ASYNC110 (the proxy's own state)
                    await trio.sleep(0.1)
            assert results == [b"done"]
            with pytest.raises(prism.client.Unavailable):
                await client.keyvalue("kv").get("k")


async def test_serve_cancelled_without_calls_stops_at_once() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(prism.serve, in_code())
            nursery.cancel_scope.cancel()
    assert proxy.stopped


async def test_serve_startup_failure_raises_the_error_itself() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(prism.ListenFailed, match=f"127.0.0.1:{port}"):
                await nursery.start(prism.serve, in_code(listen=f"127.0.0.1:{port}"))


async def test_serve_stop_is_idempotent() -> None:
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(prism.serve, in_code())
        await proxy.stop()
        await proxy.stop()
    assert proxy.stopped


async def test_serve_bad_yaml_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "prism.yaml"
    path.write_text(YAML.replace("shutdown_grace: 30", "shutdown_grace: soon"))
    async with trio.open_nursery() as nursery:
        with pytest.raises(prism.ConfigError, match="shutdown_grace"):
            await nursery.start(prism.serve, path)


async def test_serve_unknown_plugin_fails_the_start_as_itself() -> None:
    config = in_code(namespaces=(NamespaceConfig(name="x", plugin=PluginConfig(name="nothing")),))
    async with trio.open_nursery() as nursery:
        with pytest.raises(prism.PluginStartFailed, match="plugin 'nothing' refused: no plugin"):
            await nursery.start(prism.serve, config)
