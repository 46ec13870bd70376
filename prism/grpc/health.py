"""The standard ``grpc.health.v1.Health`` service (Check and Watch).

A :class:`HealthState` holds the serving status of each service name; the name ``""`` is the
server as a whole. The application sets statuses; :class:`Health` serves them::

    state = HealthState()
    server = pg.Server([Health(state), MyService()])
    state.set("my.pkg.MyService", ServingStatus.SERVING)

Statuses are set from the Trio thread that runs the server. A client calls
``/grpc.health.v1.Health/Check`` with :class:`HealthCheckRequest` and reads a
:class:`HealthCheckResponse`, both importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from prism._proto.grpc.health import v1 as health_pb
from prism._proto.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from prism._proto.grpc.health.v1 import HealthCheckResponseServingStatus as ServingStatus
from prism.grpc.service import Service, unary_stream, unary_unary
from prism.grpc.wire.status import NotFound, Unavailable

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall

# The messages too: a client of the service imports them from here.
__all__ = ["Health", "HealthCheckRequest", "HealthCheckResponse", "HealthState", "ServingStatus"]


class HealthState:
    """The serving status of each service; ``""`` (the whole server) starts as SERVING."""

    def __init__(self, statuses: Mapping[str, ServingStatus] | None = None) -> None:
        self._statuses: dict[str, ServingStatus] = {"": ServingStatus.SERVING, **(statuses or {})}
        self._changed = trio.Event()
        self._shut_down = False

    def get(self, service: str) -> ServingStatus | None:
        """The status of ``service``, or None when it was never set."""
        return self._statuses.get(service)

    def set(self, service: str, status: ServingStatus) -> None:
        """Set the status of ``service`` and tell its watchers. Ignored after :meth:`shutdown`."""
        if self._shut_down or self._statuses.get(service) == status:
            return
        self._statuses[service] = ServingStatus(status)
        self._wake_watchers()

    def shutdown(self) -> None:
        """Every service becomes NOT_SERVING for good, and Watch calls end (UNAVAILABLE).

        Call it before ``server.shutdown(grace)``: load balancers see NOT_SERVING at once, and
        open Watch streams end instead of holding the server's grace period to its end.
        """
        self._statuses = dict.fromkeys(self._statuses, ServingStatus.NOT_SERVING)
        self._shut_down = True
        self._wake_watchers()

    async def changed(self, service: str, last: ServingStatus | None) -> ServingStatus:
        """The status of ``service`` as soon as it differs from ``last`` (at once if it does).

        A service never set is SERVICE_UNKNOWN. Raises :class:`Unavailable` once the state is
        shut down and nothing more will change. Cancellation just stops the wait.
        """
        while True:
            status = self._statuses.get(service, ServingStatus.SERVICE_UNKNOWN)
            if status != last:
                await trio.lowlevel.checkpoint()
                return status
            if self._shut_down:
                raise Unavailable("the server is shutting down")
            await self._changed.wait()

    def _wake_watchers(self) -> None:
        # Waiters hold the old event; the next wait starts on a fresh one.
        self._changed.set()
        self._changed = trio.Event()


class Health(Service):
    """``grpc.health.v1.Health`` over a :class:`HealthState` (a new one unless given)."""

    name = "grpc.health.v1.Health"

    def __init__(self, state: HealthState | None = None) -> None:
        self.state = state if state is not None else HealthState()

    @unary_unary("Check", health_pb.HealthCheckRequest, health_pb.HealthCheckResponse)
    async def check(
        self, request: health_pb.HealthCheckRequest, call: ServerCall
    ) -> health_pb.HealthCheckResponse:
        status = self.state.get(request.service)
        if status is None:
            raise NotFound(f"unknown service {request.service!r}")
        return health_pb.HealthCheckResponse(status=status)

    @unary_stream("Watch", health_pb.HealthCheckRequest, health_pb.HealthCheckResponse)
    async def watch(self, request: health_pb.HealthCheckRequest, call: ServerCall) -> None:
        """The current status, then each change, until the client cancels or shutdown."""
        last: ServingStatus | None = None
        while True:
            last = await self.state.changed(request.service, last)
            await call.send_message(health_pb.HealthCheckResponse(status=last))
