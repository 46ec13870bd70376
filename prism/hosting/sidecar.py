"""The sidecar deployment model: the plugin runs in a child process the proxy launches, and is
reached over gRPC on a private Unix socket.

Each instance keeps a **warm standby**: a second process, launched ahead of need, that has
imported the plugin, bound its socket and printed its handshake, and waits for Initialize.
A crash (or an UNHEALTHY answer) is followed by Initialize on the standby rather than a cold
start (most of which is Python importing the plugin), and a new standby is launched behind it.
The standby has also warmed itself up (:mod:`prism.sdk._warmup`) before its handshake, and the
first restart after a stable run does not wait (``SIDECAR_RESTART_BACKOFF``: a crash loop
still backs off from its second crash)::

    SidecarModel.run ── nursery
       ├─ StandbyPool.run: launch → handshake → wait to be taken (or die: launch another)
       ├─ plugin-N process tasks (PluginProcess.run), the active one and the standby
       └─ supervise(attempt): take the standby → connect → Initialize → route → health loop

Processes are stopped only through :class:`~prism.hosting.process.PluginProcess` (cancelling its
``run``: stdin closed, SIGTERM, grace, SIGKILL), never by pid. The runtime directory (0700)
holds every launch's socket and is removed with the instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from prism.config import NamespaceConfig
from prism.grpc.channel import open_channel
from prism.hosting import runtime_dirs
from prism.hosting.client import GrpcClient
from prism.hosting.instance import Instance
from prism.hosting.isolation import ResourceLimits
from prism.hosting.loader import artifact_path, resolve
from prism.hosting.model import HostSettings, describe_plugin, initialize, watch
from prism.hosting.process import PluginProcess, PluginSpec
from prism.hosting.supervisor import (
    RESTART_BACKOFF,
    SIDECAR_RESTART_BACKOFF,
    Backoff,
    PluginFailed,
    supervise,
)
from prism.hosting.verify import PluginRefused, verify_artifact
from prism.plugin_protocol.handshake import (
    ENV_LOG_LEVEL,
    ENV_MAX_MESSAGE_SIZE,
    Handshake,
    PluginStartError,
    log_level_name,
)

log = logging.getLogger("prism.hosting")


@dataclass(eq=False)
class Launched:
    """A sidecar process that printed its handshake; :meth:`stop` terminates it."""

    process: PluginProcess
    handshake: Handshake
    scope: trio.CancelScope = field(repr=False)

    @property
    def target(self) -> str:
        return "unix:" + str(self.handshake.socket_path)

    def stop(self) -> None:
        self.scope.cancel()


class StandbyPool:
    """Keeps one launched, handshaken process waiting (see the module docstring).

    :meth:`run` launches a process, hands it to the next :meth:`take` and launches the next
    one at once. A launch that fails is handed to a waiting taker as its error (a first start
    fails with the plugin's own reason) or, when nobody waits, retried with backoff.
    """

    def __init__(self, spec: PluginSpec, runtime_dir: Path, nursery: trio.Nursery) -> None:
        self.spec = spec
        self.runtime_dir = runtime_dir
        self._nursery = nursery
        self._send, self._receive = trio.open_memory_channel[Launched | PluginStartError](0)
        self._launches = 0
        self._serving = trio.Event()
        #: The process waiting to be taken, if any.
        self.standby: Launched | None = None

    def serving(self) -> None:
        """The first process serves: from now on keep a standby. (Not before, so that the
        standby's launch does not compete with the first start for the CPU.)"""
        self._serving.set()

    async def take(self) -> Launched:
        """The standby process (waiting for the launch in progress if there is none yet).
        Raises the launch's PluginStartError. Cancellation: stops waiting."""
        while True:
            item = await self._receive.receive()
            if isinstance(item, PluginStartError):
                raise item
            if not item.process.exited.is_set():
                return item

    async def run(self) -> None:
        backoff = Backoff(RESTART_BACKOFF)
        while True:
            self._launches += 1
            socket_path = self.runtime_dir / f"plugin-{self._launches}.sock"
            try:
                launched: Launched = await self._nursery.start(self._run_process, socket_path)
            except PluginStartError as exc:
                if self._receive.statistics().tasks_waiting_receive:
                    await self._send.send(exc)
                    continue
                delay = backoff.next_delay(0.0)
                log.warning("%s; launching another standby in %.2f s", exc, delay)
                await trio.sleep(delay)
                continue
            launched_at = trio.current_time()
            self.standby = launched
            try:
                delivered = await self._offer(launched)
            finally:
                self.standby = None
            if delivered:
                await self._serving.wait()
            else:
                delay = backoff.next_delay(trio.current_time() - launched_at)
                log.warning(
                    "plugin %r: the standby process exited before it was needed (%s); "
                    "launching another in %.2f s",
                    self.spec.name,
                    launched.process.exit_status,
                    delay,
                )
                await trio.sleep(delay)

    async def _offer(self, launched: Launched) -> bool:
        """Hand ``launched`` to a taker; False if it exited first."""
        delivered = False
        async with trio.open_nursery() as race:

            async def offer() -> None:
                nonlocal delivered
                await self._send.send(launched)
                delivered = True
                race.cancel_scope.cancel()

            async def died() -> None:
                await launched.process.exited.wait()
                race.cancel_scope.cancel()

            race.start_soon(offer)
            race.start_soon(died)
        return delivered

    async def _run_process(
        self, socket_path: Path, *, task_status: trio.TaskStatus[Launched]
    ) -> None:
        process = PluginProcess(self.spec, socket_path=socket_path, runtime_dir=self.runtime_dir)
        failure: PluginStartError | None = None
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    # Caught here: out of the nursery it would arrive in an ExceptionGroup.
                    try:
                        handshake = await nursery.start(process.run)
                    except PluginStartError as exc:
                        failure = exc
                    else:
                        task_status.started(Launched(process, handshake, scope))
        finally:
            # A SIGKILLed plugin cannot unlink its socket; every launch has a path of its own.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
        if failure is not None:
            raise failure


class SidecarModel:
    mode = "sidecar"

    def __init__(self, settings: HostSettings, ns: NamespaceConfig, instance: Instance) -> None:
        self.settings = settings
        self.ns = ns
        self.instance = instance
        self.pool: StandbyPool | None = None

    def command(self) -> tuple[str, ...]:
        """The command that launches the sidecar: the namespace's ``command``, or prism's
        launcher with the proxy's verification policy (it verifies the files it imports)."""
        if self.ns.plugin.command is not None:
            return self.ns.plugin.command
        sec = self.settings.config.plugin_security
        flags: list[str] = []
        if not sec.verify_permissions:
            flags.append("--no-verify-permissions")
        if sec.require_signatures:
            flags.append("--require-signature")
        for key in sec.trusted_keys:
            flags += ["--trusted-key", key]
        return (sys.executable, "-m", "prism.hosting.launcher", *flags, self.ns.plugin.name)

    def spec(self) -> PluginSpec:
        lim = self.ns.plugin.limits
        return PluginSpec(
            name=self.ns.name,
            command=self.command(),
            env={
                **self.ns.plugin.env,
                ENV_MAX_MESSAGE_SIZE: str(self.settings.config.max_message_size),
                # What the proxy logs the forwarded records at (its logging: the config's
                # level, `--log-level`, or an embedding application's own setup).
                ENV_LOG_LEVEL: log_level_name(
                    logging.getLogger(f"prism.plugin.{self.ns.name}").getEffectiveLevel()
                ),
            },
            inherit_env=self.ns.plugin.inherit_env,
            limits=ResourceLimits(
                memory_bytes=lim.memory_mb * (1 << 20) if lim.memory_mb else None,
                cpu_seconds=lim.cpu_seconds,
                open_files=lim.open_files,
            ),
            startup_grace=self.ns.plugin.startup_timeout,
            plugin=self.ns.plugin.name,
        )

    def _precheck(self) -> None:
        """Verify the plugin's files from here too, when this process can find them, for a
        refusal that does not wait for a process launch. Nothing is imported."""
        ref = self.ns.plugin.name
        try:
            module, _ = resolve(ref)
            path = artifact_path(ref, module)
        except PluginRefused:
            return  # perhaps only on the sidecar's PYTHONPATH: the launcher decides
        verify_artifact(ref, path, self.settings.policy)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Launch the first process and its standby, serve, restart from the standby after a
        failure. Cancellation stops every process and removes the runtime directory."""
        if self.ns.plugin.command is None:
            self._precheck()
        spec = self.spec()
        runtime_dir = runtime_dirs.create(self.ns.name, self.settings.config.runtime_dir)
        try:
            async with trio.open_nursery() as nursery:
                self.pool = StandbyPool(spec, runtime_dir, nursery)
                nursery.start_soon(self.pool.run)
                await supervise(
                    self.attempt,
                    self.instance,
                    what=describe_plugin(self.ns),
                    startup_timeout=self.ns.plugin.startup_timeout,
                    backoff=SIDECAR_RESTART_BACKOFF,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()
        finally:
            shutil.rmtree(runtime_dir, ignore_errors=True)

    async def attempt(self, number: int, *, task_status: trio.TaskStatus[None]) -> None:
        assert self.pool is not None
        launched = await self.pool.take()
        instance = self.instance
        instance.pid = launched.process.pid
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_exit, launched)
                async with open_channel(
                    launched.target, options=self.settings.channel_options()
                ) as channel:
                    client = GrpcClient(channel)
                    instance.address = launched.target
                    instance.up(client, await initialize(client, self.ns, self.settings.config))
                    self.pool.serving()
                    task_status.started()
                    await watch(self.ns, instance, client)
        finally:
            launched.stop()
            instance.pid = None

    async def _watch_exit(self, launched: Launched) -> None:
        """Take the instance out of routing the moment its process exits (callers get
        UNAVAILABLE at once instead of waiting for the restart), and end the attempt."""
        await launched.process.exited.wait()
        # Being stopped stops the process too: that is no failure to report.
        await trio.lowlevel.checkpoint_if_cancelled()
        reason = f"plugin {self.ns.name!r} exited unexpectedly ({launched.process.exit_status})"
        if not self.instance.retiring:
            log.warning("%s", reason)
        self.instance.down(reason)
        raise PluginFailed(reason)
