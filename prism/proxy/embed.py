"""The whole proxy inside a Trio application's own nursery: ``prism.serve``.

::

    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(prism.serve, config)
        ...  # proxy.address is "host:port"
        await proxy.stop()  # or cancel the nursery: both stop it gracefully
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from prism.config import ProxyConfig, load_config
from prism.proxy.app import Proxy

__all__ = ["RunningProxy", "serve"]

#: How long a graceful stop may take beyond ``shutdown_grace`` (the servers' last GOAWAYs and
#: closes) before the proxy is cancelled outright: this only bounds a stop that hangs.
STOP_MARGIN = 5.0


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RunningProxy:
    """A proxy started by :func:`serve`: where it listens, and how to stop it."""

    def __init__(self, proxy: Proxy, stopped: trio.Event) -> None:
        self._proxy = proxy
        self._stopped = stopped
        self.config: ProxyConfig = proxy.config
        assert proxy.address is not None
        #: The front door, ``"host:port"`` (the port the system chose for ``listen: ...:0``):
        #: what :func:`prism.client.connect` takes.
        self.address = _target(*proxy.address)
        #: The admin API's TCP listener (``"host:port"``), or None.
        self.admin_address = None if proxy.admin_address is None else _target(*proxy.admin_address)
        #: The admin API's Unix socket, or None.
        self.admin_socket: Path | None = (
            None if proxy.admin_socket is None else Path(proxy.admin_socket)
        )

    def __repr__(self) -> str:
        return f"<prism.RunningProxy {self.address}>"

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def stop(self) -> None:
        """Stop gracefully and return once stopped: health turns NOT_SERVING, every connection
        gets GOAWAY, in-flight calls get ``shutdown_grace`` seconds, then each plugin is sent
        Shutdown (within its ``drain_grace``). :func:`serve` then returns. Idempotent.
        Cancelled, it abandons the stop where it is; cancelling the nursery the proxy runs in
        stops it gracefully as well."""
        if not self._stopped.is_set():
            await self._proxy.stop()
        await self._stopped.wait()


async def serve(
    config: ProxyConfig | str | os.PathLike[str],
    *,
    task_status: trio.TaskStatus[RunningProxy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy — plugins, front door, admin API, health, reflection — until it is
    stopped: ``proxy = await nursery.start(prism.serve, config)``.

    ``config`` is a :class:`prism.config.ProxyConfig` built in code, or the path of a YAML
    file (read with :func:`prism.config.load_config`). Starting raises what ``prism serve``
    reports as startup errors: ``ConfigError``, ``PluginStartFailed``, ``PluginRefused``,
    ``ListenFailed`` (a port in use). ``started`` hands over a :class:`RunningProxy` once every
    plugin is initialized and the listeners accept connections.

    Stopping: ``await proxy.stop()`` (then this returns), or cancellation of the caller's
    scope (then it re-raises ``Cancelled``): both stop the proxy gracefully — in-flight calls
    get ``shutdown_grace`` seconds, then plugins are shut down within their ``drain_grace``
    (plus a few seconds in all); cancellation during startup abandons the start at once.
    """
    if not isinstance(config, ProxyConfig):
        config = load_config(config)
    proxy = Proxy(config)
    stopped = trio.Event()
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Proxy]) -> None:
        try:
            with scope:
                await proxy.run(task_status=task_status)
        finally:
            stopped.set()

    starting = True
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            starting = False
            # From here the caller's cancellation reaches the proxy through a graceful stop,
            # not as a cancellation of every call in flight.
            scope.shield = True
            task_status.started(RunningProxy(proxy, stopped))
            try:
                await stopped.wait()
            except trio.Cancelled:
                if not stopped.is_set():
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(config.shutdown_grace + STOP_MARGIN),
                    ):
                        await proxy.stop()
                raise
            finally:
                scope.cancel()
    except BaseExceptionGroup as group:
        # A failed start is one error (ListenFailed, PluginStartFailed, ...): raise it as
        # itself, as ``prism serve`` reports it, not wrapped by this function's nursery.
        # Nothing else runs in the nursery while starting: the group holds that one error.
        if starting:
            raise _sole(group) from None
        raise


def _sole(error: BaseException) -> BaseException:
    """The one error inside nested single-member groups (the proxy's own nurseries)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
