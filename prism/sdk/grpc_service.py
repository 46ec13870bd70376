"""``prism.plugin.v1.BackendPlugin`` served over gRPC: a plugin instance as a sidecar or remote
service. The same plugin object runs in-process without this module.

- :class:`BackendPluginService` serves one instance: a sidecar, whose process is that instance's
  whole life (the process exits once Shutdown was answered).
- :class:`SessionPluginService` serves a remote plugin: a long-lived service that outlives any
  one proxy. Every proxy instance that connects gets a plugin instance of its own, a *session*,
  named by the ``prism-plugin-session`` metadata it sends on every call: Initialize opens the
  session, Shutdown closes it (the service keeps running), and a session nobody has called for
  ``idle_timeout`` seconds (a proxy that died) is closed. A session survives reconnections; a
  restarted service has none, which it says in its HealthCheck answer
  (``details["prism.session"] == "none"``) so the proxy initializes again. Calls without the
  metadata share one default session.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from prism import grpc as pg
from prism._proto.prism.plugin.v1 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    InitializeRequest,
    InitializeResponse,
    ShutdownRequest,
    ShutdownResponse,
)
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, Status, Unavailable
from prism.plugin_protocol import SERVICE_NAME, SESSION_DETAIL, SESSION_METADATA
from prism.sdk import _envelope
from prism.sdk.instance import PluginInstance, State, open_plugin
from prism.sdk.plugin import BackendPlugin

DEFAULT_SESSION_IDLE_TIMEOUT = 300.0

__all__ = [
    "DEFAULT_SESSION_IDLE_TIMEOUT",
    "SESSION_DETAIL",
    "SESSION_METADATA",
    "BackendPluginService",
    "SessionPluginService",
]

log = logging.getLogger("prism.sdk.service")


class BackendPluginService(pg.Service):
    name = SERVICE_NAME

    def __init__(self, instance: PluginInstance) -> None:
        self.instance = instance
        #: Set once Shutdown was answered: the process serving this should exit.
        self.shut_down = trio.Event()

    @pg.unary_unary("Initialize", InitializeRequest, InitializeResponse)
    async def initialize(
        self, request: InitializeRequest, call: pg.ServerCall
    ) -> InitializeResponse:
        return await self.instance.initialize(request)

    @pg.unary_unary("HealthCheck", HealthCheckRequest, HealthCheckResponse)
    async def health_check(
        self, request: HealthCheckRequest, call: pg.ServerCall
    ) -> HealthCheckResponse:
        return await self.instance.health_check(request)

    @pg.unary_unary("Execute", bytes, bytes)
    async def execute(self, request: bytes, call: pg.ServerCall) -> bytes | Pieces:
        return await self.instance.execute_encoded(request)

    @pg.stream_stream("ExecuteStream", bytes, bytes)
    async def execute_stream(self, call: pg.ServerCall) -> None:
        await serve_stream(self.instance, call)

    @pg.unary_unary("Shutdown", ShutdownRequest, ShutdownResponse)
    async def shutdown(self, request: ShutdownRequest, call: pg.ServerCall) -> ShutdownResponse:
        try:
            return await self.instance.shutdown(request)
        finally:
            self.shut_down.set()


async def serve_stream(instance: PluginInstance, call: pg.ServerCall) -> None:
    """One ExecuteStream on ``instance``, bytes in and out (shared results are sent as they
    were encoded once). A stream the plugin ends with RESOURCE_EXHAUSTED (a subscriber cut off
    for falling behind) ends at once (``ServerCall.end_at_once``): results still held back by
    flow control are dropped, so the status does not wait behind the very backlog it is about
    (nor behind the rest of one result begun: then the stream is reset, ENHANCE_YOUR_CALM)."""
    try:
        await instance.execute_stream_encoded(call.receive_message, call.send_message)
    except GrpcError as exc:
        if exc.status == Status.RESOURCE_EXHAUSTED:
            call.end_at_once(exc)
        raise


@dataclass(eq=False)
class _Session:
    id: str
    instance: PluginInstance
    closed: trio.Event = field(default_factory=trio.Event)
    last_used: float = field(default_factory=trio.current_time)
    active: int = 0


class SessionPluginService(pg.Service):
    """A remote plugin service: one plugin instance per proxy session (module docstring).

    ``factory`` makes a fresh plugin object for each session; ``nursery`` is where sessions
    live (cancelling it closes them all, each shutting its instance down gracefully).
    """

    name = SERVICE_NAME

    def __init__(
        self,
        factory: Callable[[], BackendPlugin],
        nursery: trio.Nursery,
        *,
        idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT,
    ) -> None:
        self.factory = factory
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, _Session] = {}
        self._nursery = nursery
        self._open_lock = trio.Lock()
        if math.isfinite(idle_timeout):
            nursery.start_soon(self._expire_idle)

    # -- sessions -----------------------------------------------------------------------------

    @staticmethod
    def session_id(call: pg.ServerCall) -> str:
        value = call.metadata_value(SESSION_METADATA)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return value or ""

    async def _open(self, sid: str) -> _Session:
        async with self._open_lock:
            session = self.sessions.get(sid)
            if session is None:
                session = await self._nursery.start(self._run_session, sid)
                self.sessions[sid] = session
                log.info("plugin session %r opened (%d open)", sid, len(self.sessions))
            return session

    async def _run_session(self, sid: str, *, task_status: trio.TaskStatus[_Session]) -> None:
        session: _Session | None = None
        try:
            async with open_plugin(self.factory()) as instance:
                session = _Session(sid, instance)
                task_status.started(session)
                await session.closed.wait()
        except Exception:
            # A plugin background task crashed: that ends this session only, not the service.
            log.exception("plugin session %r ended with an error", sid)
        finally:
            if session is not None:
                session.closed.set()
                if self.sessions.get(sid) is session:
                    del self.sessions[sid]

    def _close(self, session: _Session, why: str) -> None:
        session.closed.set()
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            log.info("plugin session %r closed: %s (%d open)", session.id, why, len(self.sessions))

    async def _expire_idle(self) -> None:
        while True:
            await trio.sleep(self.idle_timeout / 4)
            now = trio.current_time()
            for session in list(self.sessions.values()):
                if session.active == 0 and now - session.last_used > self.idle_timeout:
                    self._close(session, f"idle for {now - session.last_used:.0f} s")

    def _lookup(self, call: pg.ServerCall) -> _Session | None:
        session = self.sessions.get(self.session_id(call))
        if session is not None:
            session.last_used = trio.current_time()
        return session

    # -- the protocol -------------------------------------------------------------------------

    @pg.unary_unary("Initialize", InitializeRequest, InitializeResponse)
    async def initialize(
        self, request: InitializeRequest, call: pg.ServerCall
    ) -> InitializeResponse:
        session = await self._open(self.session_id(call))
        session.last_used = trio.current_time()
        response = await session.instance.initialize(request)
        if not response.success and session.instance.state is State.NEW:
            # Nothing to keep: the next Initialize starts afresh.
            self._close(session, "Initialize failed")
        return response

    @pg.unary_unary("HealthCheck", HealthCheckRequest, HealthCheckResponse)
    async def health_check(
        self, request: HealthCheckRequest, call: pg.ServerCall
    ) -> HealthCheckResponse:
        session = self._lookup(call)
        if session is None:
            return HealthCheckResponse(
                status=HealthCheckResponseStatus.UNHEALTHY,
                message="no plugin instance for this session: send Initialize",
                details={SESSION_DETAIL: "none"},
            )
        return await session.instance.health_check(request)

    @pg.unary_unary("Execute", bytes, bytes)
    async def execute(self, request: bytes, call: pg.ServerCall) -> bytes | Pieces:
        session = self._lookup(call)
        if session is None:
            return _envelope.execute_error(
                Unavailable("no plugin instance for this session (not initialized, or closed)")
            )
        session.active += 1
        try:
            return await session.instance.execute_encoded(request)
        finally:
            session.active -= 1
            session.last_used = trio.current_time()

    @pg.stream_stream("ExecuteStream", bytes, bytes)
    async def execute_stream(self, call: pg.ServerCall) -> None:
        session = self._lookup(call)
        if session is None:
            raise Unavailable("no plugin instance for this session (not initialized, or closed)")
        session.active += 1
        try:
            await serve_stream(session.instance, call)
        finally:
            session.active -= 1
            session.last_used = trio.current_time()

    @pg.unary_unary("Shutdown", ShutdownRequest, ShutdownResponse)
    async def shutdown(self, request: ShutdownRequest, call: pg.ServerCall) -> ShutdownResponse:
        session = self._lookup(call)
        if session is None:
            return ShutdownResponse(success=True)  # idempotent, as for one instance
        try:
            return await session.instance.shutdown(request)
        finally:
            self._close(session, "Shutdown")
