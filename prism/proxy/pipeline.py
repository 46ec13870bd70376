"""The request path, in one place: every stage a DataProxy call goes through, in order.

::

    front door → authenticate → authorize → rate limit → concurrency limit
               → route → breaker → plugin
               (audit record, metrics and trace span around the whole call)

Call-level stages run in :class:`CallStages`, the one ``prism.grpc`` server interceptor the
front door's server is built with: before the handler, a :class:`RequestInfo` is made and kept
in ``call.state[REQUEST]``, the trace context is read (:class:`Tracer`) and the caller is
authenticated (:class:`Authenticator`: UNAUTHENTICATED ends the call here); once the call is
over, whatever ended it, its metrics, its audit record and its span are written from that
RequestInfo and the final status. Only DataProxy methods are intercepted: health and reflection
on the same port stay open (a load balancer's probe has no credentials).

Namespace-level stages run in :meth:`Pipeline.unary` and :meth:`Pipeline.stream`, called by the
front door's handlers, once the namespace and operation are read from the request bytes
(``envelope.target``; the payload is never decoded): authorization (:class:`Authorizer`),
the rate limit (:class:`RateLimiter`), the concurrency limit (:class:`ConcurrencyLimiter`),
the default deadline, the route (``Router.route``: NOT_FOUND for an unknown namespace) and the
circuit breaker of the plugin instance that serves it (:class:`Breakers`), then the plugin.
Each namespace has its own :class:`NamespaceStages`, built by
:func:`prism.proxy.assembly.namespace_stages`; a namespace that is not configured gets no-op
stages and NOT_FOUND from the router.

Every stage is a small Protocol with a no-op implementation here (the defaults: nothing
configured, the proxy works as it did before the stages existed); the real ones live in a
module of their own (``authn``, ``authz``, ``ratelimit``, ``limits``, ``breaker``, ``audit``,
``tracing``), and :mod:`prism.proxy.assembly` builds each from the configuration in one line.

Streams (ExecuteStream) go through the same stages, once, when the stream opens (its first
request names the namespace and operation): one authorization decision, one rate-limit token,
and a concurrency permit held for the stream's whole life (``info.stream`` is True, so a
limiter can give streams a cap of their own: a subscription may last for hours and must not
starve unary calls). The default deadline applies to unary calls only: a stream without a
deadline is a subscription meant to last. The breaker is asked once when the stream opens and
told how it ended.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from prism.grpc.interceptor import CallOutcome, ServerInterceptor
from prism.grpc.wire.framing import Pieces
from prism.grpc.wire.status import GrpcError, InvalidArgument, Status
from prism.proxy.envelope import check_response, target
from prism.proxy.metrics import NamespaceMetrics, ProxyMetrics
from prism.proxy.request import ANONYMOUS, REQUEST, Identity, RequestInfo
from prism.sdk.instance import CALLER_CANCEL

if TYPE_CHECKING:
    from prism.config import NamespaceConfig
    from prism.grpc.call import ServerCall

__all__ = [
    "DATA_PROXY",
    "EXECUTE_STREAM",
    "AllowAll",
    "AuditLog",
    "Authenticator",
    "Authorizer",
    "Background",
    "Breaker",
    "Breakers",
    "CallStages",
    "ConcurrencyLimiter",
    "NamespaceStages",
    "NoAudit",
    "NoAuthentication",
    "NoBreaker",
    "NoConcurrencyLimit",
    "NoRateLimit",
    "NoTracing",
    "Pipeline",
    "RateLimiter",
    "Route",
    "Router",
    "Tracer",
]

DATA_PROXY = "/prism.proxy.v1.DataProxy/"
EXECUTE_STREAM = DATA_PROXY + "ExecuteStream"

ReceiveBytes = Callable[[], Awaitable[bytes | Pieces | None]]
SendBytes = Callable[[bytes | Pieces], Awaitable[None]]


# -- what the pipeline routes to (prism.hosting's NamespaceRoute and PluginHost) -------------


class Route(Protocol):
    """A namespace's route to whichever plugin instance serves it now."""

    @property
    def current(self) -> object:
        """The instance serving now (None while none is): a breaker's state is per instance."""
        ...

    async def execute(self, request: bytes | Pieces) -> bytes | Pieces: ...

    async def execute_stream(self, receive: ReceiveBytes, send: SendBytes) -> None: ...


class Router(Protocol):
    def route(self, namespace: str) -> Route:
        """The route of ``namespace``; raises NotFound for an unknown namespace."""
        ...


# -- call-level stages (run by CallStages, around every DataProxy call) ------------------------


class Tracer(Protocol):
    def begin(self, call: ServerCall, info: RequestInfo) -> None:
        """Set ``info.trace``: the client's ``traceparent``/``tracestate`` from
        ``call.metadata``, or a new trace. Runs first: even a call that authentication refuses
        has a trace id in its audit record. Must not raise."""
        ...

    def outgoing(self, info: RequestInfo, request: bytes) -> bytes | Pieces:
        """The request bytes the plugin gets: the same bytes, or with the trace context
        added to their ``metadata`` map (field 4 of ExecuteRequest and StreamRequest: a map
        entry appended to the bytes is merged by the decoder, so nothing has to be decoded;
        a large request and the entry as :class:`Pieces`, sent without joining them).
        A stream's first request comes here. Must not raise."""
        ...

    def end(self, info: RequestInfo, outcome: CallOutcome) -> None:
        """The call is over (end its span). Must not raise."""
        ...


class Authenticator(Protocol):
    async def authenticate(self, call: ServerCall, info: RequestInfo) -> Identity:
        """The caller's identity, from ``call.metadata`` (``authorization: Bearer ...``) and
        ``call.peer`` (the verified client certificate). Raise ``Unauthenticated`` with a
        generic message when the credentials are missing or invalid (log the reason, never
        the token; count it with ``ProxyMetrics.auth_failed(reason)``). Whether anonymous
        callers may use a namespace is the namespace's authorizer's decision: return
        ``ANONYMOUS`` for a caller without credentials when that is allowed anywhere."""
        ...


class AuditLog(Protocol):
    def record(self, info: RequestInfo, outcome: CallOutcome) -> None:
        """One record per call (also for one refused before its namespace was read): never
        credentials, tokens or payloads. Must not raise, must not block."""
        ...

    def record_admin(
        self, action: str, target: str, caller: Identity | str | None, status: Status | str
    ) -> None:
        """One record per admin action (the admin API calls this). Must not raise."""
        ...


# -- namespace-level stages (run by Pipeline.unary / Pipeline.stream) ----------------------------


class Authorizer(Protocol):
    def authorize(self, info: RequestInfo) -> None:
        """Raise ``PermissionDenied`` naming the namespace and operation (not the rule) unless
        ``info.identity`` may call ``info.operation`` here."""
        ...


class RateLimiter(Protocol):
    def check(self, info: RequestInfo) -> bool:
        """Take a token (True), or raise ``ResourceExhausted`` carrying a
        ``google.rpc.RetryInfo`` in its trailers (``grpc-status-details-bin``). Synchronous:
        refusing must be cheap. False: no token here now, but one may come (a fleet limit
        asking Redis): :meth:`wait_for_token` decides."""
        ...

    async def wait_for_token(self, info: RequestInfo) -> None:
        """Called only when :meth:`check` said False: wait (a bounded time) for a token, or
        raise ``ResourceExhausted``. Cancellation leaves without a token."""
        ...


class ConcurrencyLimiter(Protocol):
    def try_acquire(self, info: RequestInfo) -> bool:
        """Take a permit now if one is free (the fast path: no coroutine per call)."""
        ...

    async def acquire(self, info: RequestInfo) -> None:
        """Wait for a permit in a bounded queue, or raise ``ResourceExhausted`` (queue full,
        queue timeout). Called only when :meth:`try_acquire` said False. Cancellation (the
        call's deadline, the client's reset) leaves the queue without a permit."""
        ...

    def release(self, info: RequestInfo) -> None:
        """Give back the permit a successful acquire took."""
        ...


class Breaker(Protocol):
    def admit(self) -> None:
        """Raise ``Unavailable`` with the reason while the breaker is open (fail fast, without
        entering the plugin); let a probe through when half-open."""
        ...

    def record(self, status: Status) -> None:
        """How the plugin call it admitted ended (OK, or the status the client gets)."""
        ...


class Breakers(Protocol):
    def for_route(self, route: Route) -> Breaker:
        """The breaker of the instance ``route.current`` (a new instance, after a hot reload,
        starts with a closed breaker)."""
        ...


class Background(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Its work, started (``task_status.started()``) once ready; until cancelled."""
        ...


# -- the no-op stages: what runs when nothing is configured ---------------------------------------


class NoTracing:
    def begin(self, call: ServerCall, info: RequestInfo) -> None:
        pass

    def outgoing(self, info: RequestInfo, request: bytes) -> bytes:
        return request

    def end(self, info: RequestInfo, outcome: CallOutcome) -> None:
        pass


class NoAuthentication:
    """Everyone is the anonymous caller."""

    async def authenticate(self, call: ServerCall, info: RequestInfo) -> Identity:
        return ANONYMOUS


class NoAudit:
    def record(self, info: RequestInfo, outcome: CallOutcome) -> None:
        pass

    def record_admin(
        self, action: str, target: str, caller: Identity | str | None, status: Status | str
    ) -> None:
        pass


class AllowAll:
    def authorize(self, info: RequestInfo) -> None:
        pass


class NoRateLimit:
    def check(self, info: RequestInfo) -> bool:
        return True

    async def wait_for_token(self, info: RequestInfo) -> None:  # never called: check says yes
        await trio.lowlevel.checkpoint()


class NoConcurrencyLimit:
    def try_acquire(self, info: RequestInfo) -> bool:
        return True

    async def acquire(self, info: RequestInfo) -> None:  # never called: try_acquire says yes
        await trio.lowlevel.checkpoint()

    def release(self, info: RequestInfo) -> None:
        pass


class NoBreaker:
    def for_route(self, route: Route) -> Breaker:
        return self

    def admit(self) -> None:
        pass

    def record(self, status: Status) -> None:
        pass


@dataclass(slots=True)
class NamespaceStages:
    """One namespace's stages (built by ``assembly.namespace_stages``)."""

    metrics: NamespaceMetrics
    authorizer: Authorizer
    rate_limiter: RateLimiter
    limiter: ConcurrencyLimiter
    breakers: Breakers
    #: Seconds a unary call may take when the client sent no deadline; None: no default.
    default_timeout: float | None = None

    @classmethod
    def none(cls, metrics: NamespaceMetrics) -> NamespaceStages:
        """No stage at all (a namespace that is not configured)."""
        return cls(metrics, AllowAll(), NoRateLimit(), NoConcurrencyLimit(), NoBreaker())


NamespaceStagesFactory = Callable[["NamespaceConfig", NamespaceMetrics], NamespaceStages]


# -- the pipeline ---------------------------------------------------------------------------------


class Pipeline:
    """The stages of one proxy, and the order they run in (module docstring).

    Built by :func:`prism.proxy.assembly.build_pipeline`. Install :attr:`interceptor` on the
    front door's server; its handlers call :meth:`unary` and :meth:`stream`. The call-level
    stages are attributes (a config reload may replace them); namespaces come and go with
    :meth:`set_namespace` and :meth:`remove_namespace`.
    """

    def __init__(
        self,
        router: Router,
        *,
        metrics: ProxyMetrics | None = None,
        authenticator: Authenticator | None = None,
        tracer: Tracer | None = None,
        audit: AuditLog | None = None,
        namespace_stages: NamespaceStagesFactory | None = None,
        background: Sequence[Background] = (),
    ) -> None:
        self.router = router
        #: What namespace stages lean on and that has work of its own (the fleet limits'
        #: Redis connection): run by :meth:`run`, like the call-level stages' background.
        self.background = tuple(background)
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self.authenticator: Authenticator = authenticator or NoAuthentication()
        self.tracer: Tracer = tracer or NoTracing()
        self.audit: AuditLog = audit or NoAudit()
        self._namespace_stages = namespace_stages or (
            lambda ns, metrics: NamespaceStages.none(metrics)
        )
        self.namespaces: dict[str, NamespaceStages] = {}
        self._unknown = NamespaceStages.none(self.metrics.unknown)
        self.interceptor = CallStages(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background work of the call-level stages that have some: a tracer, an
        authenticator or an audit log with an ``async def run(self, *, task_status)`` method
        (a JWKS refresh, an audit file's writer, a span exporter) runs here, each started
        (``task_status.started()``) before this reports started, then :attr:`background`;
        the proxy starts this before its front door listens. Namespace-level stages have none
        of their own: they compute what they need from the clock when called, and a fleet
        limit's calls to Redis run in its connection's task (in :attr:`background`). Runs
        until cancelled."""
        async with trio.open_nursery() as nursery:
            for stage in (self.tracer, self.authenticator, self.audit):
                run = getattr(stage, "run", None)
                if run is not None:
                    await nursery.start(run)
            for service in self.background:
                await nursery.start(service.run)
            task_status.started()
            await trio.sleep_forever()

    def set_namespace(self, ns: NamespaceConfig) -> NamespaceStages:
        """Build ``ns``'s stages (again: a changed namespace starts with fresh limits)."""
        stages = self._namespace_stages(ns, self.metrics.add_namespace(ns.name))
        self.namespaces[ns.name] = stages
        return stages

    def remove_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)
        self.metrics.remove_namespace(name)

    def _info(self, call: ServerCall, stream: bool) -> tuple[RequestInfo, bool]:
        info = call.state.get(REQUEST)
        if info is not None:
            return info, True
        # Served without CallStages (a DataProxyService on a server of its own): no
        # call-level stage ran, and nothing will count the call when it ends.
        info = RequestInfo(call.peer, trio.current_time(), stream=stream)
        call.state[REQUEST] = info
        return info, False

    async def unary(self, call: ServerCall, request: bytes) -> bytes | Pieces:
        """Execute: the namespace-level stages, then the plugin; its response bytes."""
        info, intercepted = self._info(call, False)
        info.namespace, info.operation = target(request)  # front door: the envelope only
        if not info.operation:
            raise InvalidArgument("operation is required")
        stages = self.namespaces.get(info.namespace) or self._unknown
        if intercepted:
            self.metrics.request_started(info, stages.metrics)
        if stages.default_timeout is not None:
            _default_deadline(call, stages.default_timeout)
        stages.authorizer.authorize(info)  # authorize: PERMISSION_DENIED
        rate_limiter = stages.rate_limiter
        if not rate_limiter.check(info):  # rate limit: RESOURCE_EXHAUSTED + RetryInfo
            await rate_limiter.wait_for_token(info)  # a fleet limit waiting for Redis (bounded)
        limiter = stages.limiter
        if not limiter.try_acquire(info):
            await limiter.acquire(info)  # concurrency limit: waits, or RESOURCE_EXHAUSTED
        # An in-process plugin's engine cancels the operation through the call (at its
        # shutdown) instead of opening a cancel scope of its own per call.
        token = CALLER_CANCEL.set(call.cancel) if call.scope is not None else None
        try:
            route = self.router.route(info.namespace)  # route: NOT_FOUND
            breaker = stages.breakers.for_route(route)
            breaker.admit()  # breaker: UNAVAILABLE while open
            status = Status.UNKNOWN
            try:
                outgoing = self.tracer.outgoing(info, request)  # the trace context, passed on
                response = check_response(await route.execute(outgoing))  # plugin
                status = Status.OK
            except GrpcError as exc:
                status = exc.status
                raise
            except trio.Cancelled:
                status = _cancelled_status(call)
                raise
            finally:
                breaker.record(status)
            return response
        finally:
            if token is not None:
                CALLER_CANCEL.reset(token)
            limiter.release(info)

    async def stream(self, call: ServerCall) -> None:
        """ExecuteStream: the same stages, once, when the first request names the target."""
        info, intercepted = self._info(call, True)
        first: bytes | None = await call.receive_message()
        if first is None:
            raise InvalidArgument("the stream ended before its first request")
        info.namespace, info.operation = target(first)
        if not info.operation:
            raise InvalidArgument("the first request of a stream must name its operation")
        stages = self.namespaces.get(info.namespace) or self._unknown
        if intercepted:
            self.metrics.request_started(info, stages.metrics)
        stages.authorizer.authorize(info)
        if not stages.rate_limiter.check(info):
            await stages.rate_limiter.wait_for_token(info)
        limiter = stages.limiter
        if not limiter.try_acquire(info):
            await limiter.acquire(info)
        try:
            route = self.router.route(info.namespace)
            breaker = stages.breakers.for_route(route)
            breaker.admit()
            pending: list[bytes | Pieces] = [self.tracer.outgoing(info, first)]

            async def receive() -> bytes | Pieces | None:
                if pending:
                    return pending.pop()
                message: bytes | None = await call.receive_message()
                return message

            status = Status.UNKNOWN
            try:
                await route.execute_stream(receive, call.send_message)
                status = Status.OK
            except GrpcError as exc:
                status = exc.status
                if status == Status.RESOURCE_EXHAUSTED:
                    # The plugin cut the stream (a subscriber that fell behind): what flow
                    # control still holds back for this client goes, and the stream ends at
                    # once (reset, if a message is half-sent) instead of after the backlog it
                    # is about: a client that stopped reading holds nothing here any more.
                    call.end_at_once(exc)
                raise
            except trio.Cancelled:
                status = _cancelled_status(call)
                raise
            finally:
                breaker.record(status)
        finally:
            limiter.release(info)


def _default_deadline(call: ServerCall, timeout: float) -> None:
    if call.deadline == math.inf and call.scope is not None:
        call.deadline = trio.current_time() + timeout
        call.scope.deadline = call.deadline  # expiring: DEADLINE_EXCEEDED, as a client's own


def _cancelled_status(call: ServerCall) -> Status:
    """What a plugin call cut short by cancellation means for its backend's health."""
    if call.deadline <= trio.current_time():
        return Status.DEADLINE_EXCEEDED
    return Status.CANCELLED  # the client went away, or the proxy is stopping


class CallStages(ServerInterceptor):
    """The call-level stages, around every DataProxy call (module docstring)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def before(self, call: ServerCall) -> None:
        method = call.method
        if not method.startswith(DATA_PROXY):
            return  # health, reflection: no credentials needed, nothing recorded
        pipeline = self._pipeline
        info = RequestInfo(call.peer, trio.current_time(), stream=method == EXECUTE_STREAM)
        call.state[REQUEST] = info
        pipeline.tracer.begin(call, info)  # trace context
        info.identity = await pipeline.authenticator.authenticate(call, info)  # authenticate

    def after(self, call: ServerCall, outcome: CallOutcome) -> None:
        if not call.method.startswith(DATA_PROXY):
            return
        info = call.state.get(REQUEST)
        if info is None:
            return
        pipeline = self._pipeline
        try:
            pipeline.metrics.request_finished(info, outcome.status, outcome.duration)  # metrics
        finally:
            try:
                pipeline.audit.record(info, outcome)  # audit record
            finally:
                pipeline.tracer.end(info, outcome)  # trace span
