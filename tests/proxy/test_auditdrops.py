"""Lost audit records on a real proxy: its audit file is ``/dev/full`` (every write fails, as on
a full disk), calls go on through the front door, ``/metrics`` (scraped over HTTP, parsed with
prometheus-client's parser) counts the lost records and the log says so, once a minute at
most."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import prism.client
from prism.config import AdminConfig, NamespaceConfig, PluginConfig, ProxyConfig
from prism.config.audit import AuditConfig
from prism.proxy.app import Proxy
from prism.proxy.auditdrops import LOG_INTERVAL, METRIC

FULL = Path("/dev/full")


async def dropped(http: httpx.AsyncClient) -> float | None:
    reply = await http.get("/metrics")
    assert reply.status_code == 200
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name == METRIC:
                return sample.value
    return None


async def after(clock: trio.testing.MockClock, seconds: float) -> None:
    """``seconds`` later, once every task has done what that woke it for (the audit writer's
    flush, the reporter's check)."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "prism.proxy.audit" and "records dropped" in r.getMessage()
    ]


async def test_auditdrops_lost_records_are_counted_on_metrics_and_logged_once_a_minute(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = ProxyConfig(
        listen="127.0.0.1:0",
        admin=AdminConfig(listen="127.0.0.1:0", anonymous_read=True),
        audit=AuditConfig(enabled=True, file=FULL, flush_interval=1.0),
        shutdown_grace=1.0,
        namespaces=(NamespaceConfig("kv", PluginConfig("memstore"), access={"anonymous": True}),),
    )
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(Proxy(config).run)
        assert proxy.address is not None
        assert proxy.admin_address is not None
        async with (
            prism.client.connect(f"127.0.0.1:{proxy.address[1]}") as client,
            httpx.AsyncClient(base_url="http://{}:{}".format(*proxy.admin_address)) as http,
        ):
            assert await dropped(http) == 0
            kv = client.keyvalue("kv")
            for i in range(5):
                await kv.set(f"k{i}", b"v")  # a lost record never fails the call
            await after(clock, 1.5)  # the writer's flush fails
            assert await dropped(http) == 5
            await after(clock, 1)  # the reporter's next check
            assert warnings(caplog) == [
                "audit log: 5 records dropped since the last report (5 in all): its queue was "
                f"full or its file could not be written; see {METRIC}"
            ]

            for i in range(3):
                await kv.get(f"k{i}")
            await after(clock, 1.5)
            assert await dropped(http) == 8
            await after(clock, 2)
            assert len(warnings(caplog)) == 1  # within the minute: counted, not logged

            await after(clock, LOG_INTERVAL)
            assert len(warnings(caplog)) == 2
            assert warnings(caplog)[1].startswith(
                "audit log: 3 records dropped since the last report (8 in all)"
            )
        nursery.cancel_scope.cancel()
