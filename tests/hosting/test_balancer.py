"""A remote plugin with several endpoints, each a real ``prism plugin serve`` process over mTLS:
calls are spread over them, a killed one is ejected (only the calls in flight on it fail) and
re-admitted when it returns, at most half of them are ever ejected, a call that may have reached
the plugin is not retried, and a call that could not be sent is retried on another endpoint."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from host_testkit import (
    EXECUTE,
    Certs,
    RemoteService,
    Running,
    free_port,
    proxy_config,
    remote_service,
    request,
    running_proxy,
)
from hosting_fakes import wait_until

from prism import grpc as pg
from prism._proto.prism.admin.v1 import EndpointStatus
from prism._proto.prism.data.v1 import SetRequest
from prism._proto.prism.plugin.v1 import ExecuteRequest
from prism._proto.prism.proxy.v1 import ExecuteResponse
from prism.config import NamespaceConfig, OutlierConfig, PluginConfig
from prism.hosting.balancer import Balancer, EndpointInstance
from prism.hosting.client import GrpcClient
from prism.hosting.instance import Instance
from prism.hosting.model import HostSettings, initialize
from prism.hosting.remote import RemoteModel
from prism.hosting.verify import VerifyPolicy
from prism.proxy.admin import AdminActions, namespace_json
from prism.sdk.typed import pack

#: Generous: only catches hangs (the machine is shared and slow).
HANG = 90


async def start_services(
    stack: ExitStack, tmp_path: Path, certs: Certs, n: int
) -> list[RemoteService]:
    """``n`` services at once, each started in a thread (their start waits on a process)."""
    services: list[RemoteService] = []

    async def one(i: int) -> None:
        directory = tmp_path / f"svc{i}"
        directory.mkdir(exist_ok=True)
        services.append(
            await trio.to_thread.run_sync(
                stack.enter_context, remote_service(directory, certs=certs)
            )
        )

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return services


def balanced_namespace(services: list[RemoteService], **outlier: float) -> NamespaceConfig:
    first = services[0]
    return NamespaceConfig(
        "far",
        PluginConfig(
            "memstore",
            mode="remote",
            endpoints=tuple(s.endpoint for s in services),
            tls=first.certs.remote_tls(),
            health_interval=0.2,
            outlier_detection=OutlierConfig(**outlier),
        ),
        access={"anonymous": True},  # the tests' callers send no credentials
    )


def balancer_of(running: Running) -> Balancer:
    instance = running.proxy.host.route("far").current
    assert instance is not None
    model = running.proxy.host.models[instance]
    assert isinstance(model, RemoteModel)
    assert model.balancer is not None
    return model.balancer


def endpoint(balancer: Balancer, address: str) -> EndpointInstance:
    return next(e for e in balancer.endpoints if e.address == address)


def requests_to(running: Running, address: str) -> float:
    return running.proxy.metrics.endpoint_requests.labels("far", address).value


@dataclass
class Load:
    """Callers setting keys through the proxy until stopped. Every failure is kept with the
    test's phase (:attr:`phase`) at the moment its call *started*: a call started in a phase
    where no endpoint that can fail is routed to must not fail."""

    running: Running
    ok: int = 0
    phase: int = 0
    failures: list[tuple[int, pg.GrpcError]] = field(default_factory=list)

    async def caller(self, i: int) -> None:
        n = 0
        while True:
            n += 1
            phase = self.phase
            try:
                await self.running.execute("far", "set", SetRequest(key=f"c{i}-{n}", value=b"v"))
            except pg.GrpcError as exc:
                self.failures.append((phase, exc))
            else:
                self.ok += 1

    def failed_in(self, phase: int) -> list[pg.GrpcError]:
        return [exc for started, exc in self.failures if started == phase]

    async def more(self, calls: int) -> None:
        """Wait for ``calls`` more successful calls."""
        target = self.ok + calls
        await wait_until(lambda: self.ok >= target)


@dataclass
class Balanced:
    """Three remote plugin services, a proxy balancing over them, and callers running."""

    stack: ExitStack
    certs: Certs
    services: list[RemoteService]
    running: Running
    balancer: Balancer
    load: Load


@asynccontextmanager
async def balanced_proxy(
    tmp_path: Path, callers: int, n: int = 3, **outlier: float
) -> AsyncIterator[Balanced]:
    certs = Certs.make(tmp_path)
    with ExitStack() as stack:
        services = await start_services(stack, tmp_path, certs, n)
        config = proxy_config(balanced_namespace(services, **outlier))
        async with running_proxy(config) as running, trio.open_nursery() as nursery:
            load = Load(running)
            for i in range(callers):
                nursery.start_soon(load.caller, i)
            yield Balanced(stack, certs, services, running, balancer_of(running), load)
            nursery.cancel_scope.cancel()


def shown_endpoints(running: Running) -> dict[str, EndpointStatus]:
    """The namespace's endpoints as the admin API reports them."""
    return {e.address: e for e in AdminActions(running.proxy.host).get("far").endpoints}


async def test_balancer_ejects_a_killed_endpoint_and_readmits_it(tmp_path: Path) -> None:
    async with balanced_proxy(tmp_path, callers=12, base_ejection_time=1.0) as setup:
        running, load, services = setup.running, setup.load, setup.services
        metrics = running.proxy.metrics
        with trio.fail_after(HANG):
            # Every endpoint takes its share.
            await wait_until(lambda: all(requests_to(running, s.endpoint) >= 20 for s in services))
            assert load.failures == []

            victim = services[1]
            address = victim.endpoint
            port = int(address.rpartition(":")[2])
            b = endpoint(setup.balancer, address)
            in_flight_at_kill, sent_before = b.in_flight, requests_to(running, address)
            victim.process.send_signal(signal.SIGKILL)
            # Out of routing, nothing left in flight on it, and ejected.
            await wait_until(lambda: b.outlier.ejected and not b.available and b.in_flight == 0)
            sent_after = requests_to(running, address)
            load.phase = 1
            shown = shown_endpoints(running)
            assert shown[address].ejected
            assert not shown[address].healthy
            assert shown[address].ejected_until > 0
            assert all(shown[s.endpoint].healthy for s in services if s is not victim)
            assert metrics.endpoint_ejections.labels("far", address).value == 1
            assert metrics.endpoint_ejected.labels("far", address).value == 1

            # Ejected: the others serve every call.
            await load.more(300)
            assert load.failed_in(1) == []
            assert requests_to(running, address) == sent_after
            # Only calls that were on the killed endpoint failed: those in flight at the kill,
            # and those sent on its connection before the proxy saw it closed.
            failed = load.failed_in(0)
            assert len(failed) <= in_flight_at_kill + (sent_after - sent_before)
            assert all(exc.status == pg.Status.UNAVAILABLE for exc in failed)
            assert all(address in str(exc) for exc in failed)
            load.phase = 2

            # It comes back (same port): re-admitted once healthy and its time is up.
            back = tmp_path / "back"
            back.mkdir()
            await trio.to_thread.run_sync(
                setup.stack.enter_context, remote_service(back, port=port, certs=setup.certs)
            )
            await wait_until(lambda: not b.outlier.ejected)
            await wait_until(lambda: requests_to(running, address) >= sent_after + 20)
            await load.more(100)
            assert load.failed_in(2) == []
            assert metrics.endpoint_ejected.labels("far", address).value == 0
            status = namespace_json(AdminActions(running.proxy.host).get("far"))
            (json,) = [e for e in status["endpoints"] if e["address"] == address]
            assert json["healthy"]
            assert not json["ejected"]


async def test_balancer_ejects_at_most_half_and_the_survivor_serves(tmp_path: Path) -> None:
    async with balanced_proxy(tmp_path, callers=8, consecutive_failures=3) as setup:
        running, load, balancer = setup.running, setup.load, setup.balancer
        survivor, *killed = setup.services
        dead = [endpoint(balancer, s.endpoint) for s in killed]
        most_ejected = 0

        def watched() -> bool:
            nonlocal most_ejected
            most_ejected = max(most_ejected, balancer.detector.ejected_count)
            # One ejected; the other failed past the threshold, refused by the cap.
            return sorted(e.outlier.ejected for e in dead) == [False, True] and all(
                e.outlier.consecutive >= 3 for e in dead
            )

        with trio.fail_after(HANG):
            await load.more(100)
            for service in killed:
                service.process.send_signal(signal.SIGKILL)
            await wait_until(
                lambda: watched() and not any(e.available or e.in_flight for e in dead)
            )
            load.phase = 1
            await load.more(300)
            watched()
        assert most_ejected == 1
        assert load.failed_in(1) == []  # the survivor serves every call
        dead_addresses = [s.endpoint for s in killed]
        assert all(any(a in str(exc) for a in dead_addresses) for exc in load.failed_in(0))
        shown = shown_endpoints(running)
        assert shown[survivor.endpoint].healthy
        assert not shown[survivor.endpoint].ejected
        assert sum(shown[s.endpoint].ejected for s in killed) == 1
        assert not any(shown[s.endpoint].healthy for s in killed)
        gauge = running.proxy.metrics.endpoint_ejected
        assert sum(gauge.labels("far", s.endpoint).value for s in setup.services) == 1


async def test_balancer_hot_reload_drops_no_call(tmp_path: Path) -> None:
    """A reload starts a new instance on every endpoint, switches, and shuts the old sessions
    down, while callers run: none of their calls fails."""
    async with balanced_proxy(tmp_path, callers=8, n=2) as setup:
        running, load = setup.running, setup.load
        old = setup.balancer
        with trio.fail_after(HANG):
            await load.more(50)
            await running.proxy.host.reload("far")
            new = balancer_of(running)
            assert new is not old
            assert all(e.available for e in new.endpoints)
            await load.more(100)
            await old.parent.stopped.wait()  # drained, sent Shutdown, its scope closed
            # The namespace's latest plugin metrics: every endpoint's latest interval, summed.
            await wait_until(lambda: all(e.metrics is not None for e in new.endpoints))
        assert load.failures == []
        assert all(e.retiring and not e.available for e in old.endpoints)
        latest = AdminActions(running.proxy.host, running.proxy.host.latest_metrics).get("far")
        assert latest.metrics is not None
        parts = [e.metrics for e in new.endpoints if e.metrics is not None]
        assert latest.metrics.requests_total == sum(m.requests_total for m in parts)


async def test_balancer_does_not_retry_a_call_that_may_have_reached_the_plugin(
    tmp_path: Path,
) -> None:
    """An endpoint that stops answering (SIGSTOP): calls sent to it end at their deadline,
    DEADLINE_EXCEEDED, and are not sent again elsewhere (they may have been applied); those
    deadlines count towards its ejection, and then the other endpoint serves every call."""
    async with balanced_proxy(tmp_path, callers=0, n=2, consecutive_failures=2) as setup:
        running = setup.running
        first, frozen = setup.services
        f = endpoint(setup.balancer, frozen.endpoint)
        ok = timed_out = cut = 0
        messages: list[str] = []

        async def call(i: int) -> None:
            nonlocal ok, timed_out, cut
            try:
                await running.channel.unary_unary(
                    EXECUTE,
                    request("far", "set", SetRequest(key=f"k{i}", value=b"v")),
                    ExecuteResponse,
                    timeout=1.0,
                )
                ok += 1
            except pg.DeadlineExceeded:
                timed_out += 1
            except pg.Unavailable as exc:
                # Its health check timed out first: the calls still on it end with its
                # connection. Not retried either.
                cut += 1
                messages.append(str(exc))

        frozen.process.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(HANG):
                i = 0
                while not f.outlier.ejected:
                    async with trio.open_nursery() as nursery:
                        for _ in range(4):
                            i += 1
                            nursery.start_soon(call, i)
                # Each call went to one endpoint, once: what reached the frozen one timed out
                # there, the rest succeeded on the other.
                assert timed_out + cut == requests_to(running, frozen.endpoint) >= 1
                assert all(frozen.endpoint in message for message in messages)
                assert ok == requests_to(running, first.endpoint)
                ok_before = ok
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        i += 1
                        nursery.start_soon(call, i)
                assert ok == ok_before + 20
        finally:
            frozen.process.send_signal(signal.SIGCONT)


async def test_balancer_retries_a_call_that_could_not_be_sent(tmp_path: Path) -> None:
    """An endpoint routed to whose connection cannot be made (refused): the call goes to another
    endpoint instead and succeeds; the refusals count towards the endpoint's ejection."""
    certs = Certs.make(tmp_path)
    with remote_service(tmp_path, certs=certs) as service:
        refused = f"127.0.0.1:{free_port()}"  # nothing listens there
        ns = balanced_namespace([service], consecutive_failures=3)
        ns = NamespaceConfig(
            "far",
            ns.plugin.model_copy(update={"endpoints": (service.endpoint, refused)}),
            access={"anonymous": True},
        )
        config = proxy_config(ns)
        parent = Instance("far", "remote", 1)
        balancer = Balancer(parent, ns.plugin.endpoints, ns.plugin.outlier_detection)
        good, bad = balancer.endpoints
        model = RemoteModel(HostSettings(config, VerifyPolicy.from_config()), ns, parent)
        with trio.fail_after(HANG):
            async with (
                pg.open_channel(service.endpoint, ssl_context=model.ssl_context) as channel,
                pg.open_channel(refused, ssl_context=model.ssl_context) as nowhere,
            ):
                client = GrpcClient(channel, session="retry-test")
                good.up(client, await initialize(client, ns, config))
                # Routed to as if it had served: its connection is refused on the first call.
                bad.up(GrpcClient(nowhere, session="retry-test"))
                assert parent.available
                for i in range(30):
                    params = pack(SetRequest(key=f"k{i}", value=b"v"))
                    await balancer.execute(
                        bytes(ExecuteRequest(operation="set", typed_params=params))
                    )
                assert bad.outlier.ejected  # three refusals in a row
                assert good.outlier.consecutive == 0
                await client.shutdown(1.0, "test over")
