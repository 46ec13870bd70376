"""What a plugin author writes: a ``BackendPlugin`` subclass with decorated operations.

```python
class KvPlugin(BackendPlugin):
    name = "kv"
    version = "1.0.0"
    config_type = KvConfig

    async def initialize(self, config: KvConfig, credentials, namespace):
        self.nursery.start_soon(self._sweep)          # lives until the instance shuts down

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse: ...

    @stream_operation("subscribe", params=SubscribeRequest, result=Message)
    async def subscribe(self, params: SubscribeRequest, stream: OperationStream) -> None:
        await stream.send(Message(...))
```

The engine that drives these hooks for the RFC's five calls is ``prism.sdk.instance``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

import betterproto2

from prism._proto.prism.plugin.v1 import HealthCheckResponseStatus
from prism.plugin_protocol import RESERVED_OPERATION_PREFIX
from prism.sdk import contracts
from prism.sdk.keyvalue import KeyValueLimits, request_check
from prism.sdk.metrics import Metrics
from prism.sdk.typed import type_name, type_url

if TYPE_CHECKING:
    import trio

    from prism.sdk.shared import SharedResult

__all__ = [
    "RESERVED_PREFIX",
    "BackendPlugin",
    "Credentials",
    "HealthReport",
    "HealthStatus",
    "OperationContext",
    "OperationSpec",
    "OperationStream",
    "operation",
    "stream_operation",
]

#: Operation names starting with this are the host's (``_prism.metrics``), never a plugin's.
RESERVED_PREFIX = RESERVED_OPERATION_PREFIX

HealthStatus: TypeAlias = HealthCheckResponseStatus

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Payload = betterproto2.Message | bytes


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """What ``BackendPlugin.health`` returns; becomes the RFC's ``HealthCheckResponse``."""

    status: HealthStatus = HealthStatus.HEALTHY
    message: str = ""
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OperationSpec:
    """One decorated operation: its wire name, payload types and handler method."""

    name: str
    params: type  # a betterproto2.Message subclass, or bytes for raw_params
    result: type  # likewise, for typed_result / raw_result
    streaming: bool
    inbound: type | None  # streams: type of the client's later requests; None = none allowed
    method: str  # attribute name of the handler on the plugin class
    #: Optional features the handler implements ("etag", "ttl"; see prism.sdk.contracts).
    features: frozenset[str] = frozenset()

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What this operation adds to ``supported_operations``: its name, then
        ``name:feature`` for each feature (sorted)."""
        return (self.name, *(contracts.capability(self.name, f) for f in sorted(self.features)))

    def kind(self, payload_type: type | None) -> str:
        """How a payload type reads in error messages."""
        if payload_type is None:
            return "nothing"
        if payload_type is bytes:
            return "raw bytes"
        return type_name(type_url(payload_type))


def _check_payload_type(what: str, value: object) -> type:
    if value is bytes or (isinstance(value, type) and issubclass(value, betterproto2.Message)):
        return value
    raise TypeError(f"{what} must be bytes or a betterproto2 message class, not {value!r}")


def _decorate(spec: OperationSpec) -> Callable[[F], F]:
    if not spec.name or spec.name.startswith(RESERVED_PREFIX):
        raise ValueError(f"operation name {spec.name!r} is empty or reserved ({RESERVED_PREFIX}*)")

    def decorator(func: F) -> F:
        func.__prism_operation__ = spec  # type: ignore[attr-defined]
        return func

    return decorator


def operation(
    name: str, *, params: type, result: type, features: Iterable[str] = ()
) -> Callable[[F], F]:
    """Declare ``async def handler(self, params, ctx: OperationContext) -> result`` as ``name``.

    ``params``/``result`` are generated message classes (carried as ``typed_params`` /
    ``typed_result`` Anys) or ``bytes`` (``raw_params`` / ``raw_result``: no decoding at all).
    ``features`` are the optional features of the operation the handler implements
    (``("etag", "ttl")`` for the data model's ``set``; see ``prism.sdk.contracts``): they are
    advertised in ``supported_operations``, and requests needing an undeclared one are refused.
    """
    spec = OperationSpec(
        name,
        _check_payload_type("params", params),
        _check_payload_type("result", result),
        streaming=False,
        inbound=None,
        method="",
        features=contracts.check_features(name, features),
    )
    return _decorate(spec)


def stream_operation(
    name: str,
    *,
    params: type,
    result: type,
    inbound: type | None = None,
    features: Iterable[str] = (),
) -> Callable[[F], F]:
    """Declare ``async def handler(self, params, stream: OperationStream) -> None`` as ``name``.

    The handler sends any number of ``result`` values with ``await stream.send(...)``; the stream
    ends (``is_final``) when it returns. ``inbound`` is the type of the further requests the
    client may send after the first (read with ``await stream.receive()``); with the default
    ``None`` a further request fails the stream with ``INVALID_ARGUMENT``.
    """
    spec = OperationSpec(
        name,
        _check_payload_type("params", params),
        _check_payload_type("result", result),
        streaming=True,
        inbound=None if inbound is None else _check_payload_type("inbound", inbound),
        method="",
        features=contracts.check_features(name, features),
    )
    return _decorate(spec)


class Credentials(Mapping[str, str]):
    """The credentials a plugin was initialized with; its repr names the keys, never values."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Credentials(keys={sorted(self._values)!r}, values withheld)"


class OperationContext:
    """Per-call context of a unary operation: who asked what, and the plugin's cache counters."""

    __slots__ = ("_metrics", "metadata", "namespace", "operation")

    def __init__(
        self, operation: str, metadata: Mapping[str, str], namespace: str, metrics: Metrics
    ) -> None:
        self.operation = operation
        self.metadata = metadata  # the request's metadata (trace id, user id, ...)
        self.namespace = namespace
        self._metrics = metrics

    def cache_hit(self, count: int = 1) -> None:
        self._metrics.cache_hit(count)

    def cache_miss(self, count: int = 1) -> None:
        self._metrics.cache_miss(count)


class OperationStream(OperationContext):
    """Context of a stream operation: send results, receive the client's further requests."""

    __slots__ = ("_receive", "_send")

    def __init__(
        self,
        operation: str,
        metadata: Mapping[str, str],
        namespace: str,
        metrics: Metrics,
        send: Callable[[Payload | SharedResult], Awaitable[None]],
        receive: Callable[[], Awaitable[Payload | None]],
    ) -> None:
        super().__init__(operation, metadata, namespace, metrics)
        self._send = send
        self._receive = receive

    def send(self, result: Payload | SharedResult) -> Awaitable[None]:
        """Send one result (``await stream.send(result)``): a value of the declared result
        type, or a ``SharedResult`` of one (the same result sent on many streams, encoded once:
        see ``prism.sdk.shared``). Waits while the client is not reading (flow control);
        cancellation abandons the send. (A plain function returning the transport's awaitable:
        no coroutine of its own per result.)"""
        return self._send(result)

    async def receive(self) -> Payload | None:
        """The client's next request (of the declared ``inbound`` type), or ``None`` once the
        client has ended its side. Cancellation abandons the wait; no request is lost."""
        return await self._receive()

    def __aiter__(self) -> OperationStream:
        return self

    async def __anext__(self) -> Payload:
        request = await self._receive()
        if request is None:
            raise StopAsyncIteration
        return request


class BackendPlugin:
    """Base class of every plugin. Subclass it, set the class attributes, decorate operations.

    Lifetime: the host creates the object (no arguments), opens an instance scope for it
    (``prism.sdk.instance.open_plugin``) and then calls ``initialize`` once. ``self.nursery`` is
    that scope's nursery: start connections' and background tasks there, and they live exactly
    as long as the instance. Shutdown stops new operations, calls ``begin_shutdown``, lets
    in-flight ones finish within the grace period, calls ``shutdown``, then cancels the
    nursery. A background task that crashes ends the instance (the host restarts it).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    api_version: ClassVar[str] = "1.0"
    #: The generated message ``InitializeRequest.config`` must hold; None = the plugin takes none.
    config_type: ClassVar[type[betterproto2.Message] | None] = None
    #: When False, a missing config means ``config_type()`` (all defaults).
    config_required: ClassVar[bool] = True
    #: Credential keys ``initialize`` needs; a missing or empty one is ``INVALID_ARGUMENT``.
    required_credentials: ClassVar[tuple[str, ...]] = ()
    #: Grace period when ``ShutdownRequest.grace_period_ms`` is 0.
    default_grace_seconds: ClassVar[float] = 5.0

    #: Every operation by name, built from the decorators (subclasses inherit and override).
    operations: ClassVar[Mapping[str, OperationSpec]] = {}
    #: What ``InitializeResponse.supported_operations`` reports, derived from the decorators:
    #: the operation names in declaration order, then ``name:feature`` for declared features.
    supported_operations: ClassVar[tuple[str, ...]] = ()
    #: The contracts (``prism.sdk.contracts``) those capabilities cover, e.g. ``("kv.basic",)``.
    contracts: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, OperationSpec] = {}
        for klass in reversed(cls.__mro__):
            declared: dict[str, OperationSpec] = {}
            for attr, value in vars(klass).items():
                spec = getattr(value, "__prism_operation__", None)
                if not isinstance(spec, OperationSpec):
                    continue
                if spec.name in declared:
                    raise TypeError(f"{klass.__qualname__}: operation {spec.name!r} declared twice")
                declared[spec.name] = dataclasses.replace(spec, method=attr)
            # A subclass re-decorating a method replaces what that method declared; declaring an
            # inherited name on another method replaces the inherited operation. Overriding a
            # handler without a decorator keeps its operation (the lookup is by method name).
            redefined = {spec.method for spec in declared.values()}
            found = {n: s for n, s in found.items() if s.method not in redefined}
            found.update(declared)
        cls.operations = found
        cls.supported_operations = (
            *found,
            *(cap for spec in found.values() for cap in spec.capabilities[1:]),
        )
        cls.contracts = contracts.claimed(cls.supported_operations)
        for spec in found.values():
            _install_request_check(cls, spec)

    def __init__(self) -> None:
        self.metrics = Metrics()
        #: The directory of the proxy's config file, set before ``initialize`` (None when the
        #: config was not read from a file): what relative paths in the config mean.
        self.config_dir: Path | None = None
        #: Key and value size limits the SDK enforces (``prism.sdk.keyvalue``); set them from the
        #: plugin's config in ``initialize``.
        self.kv_limits = KeyValueLimits()
        self._nursery: trio.Nursery | None = None
        self.logger = logging.getLogger(f"prism.plugin.{self.name or type(self).__name__}")

    @property
    def nursery(self) -> trio.Nursery:
        """The instance scope's nursery (see the class docstring); set before ``initialize``."""
        if self._nursery is None:
            raise RuntimeError(
                f"{type(self).__name__}.nursery is only available inside an instance scope "
                "(prism.sdk.instance.open_plugin), from initialize() on"
            )
        return self._nursery

    def config_path(self, value: str) -> Path:
        """A path from this plugin's config as the operator meant it: a relative one is relative
        to the directory of the proxy's config file (``config_dir``, which the proxy sends in
        Initialize), like every path in that file; without one, to the working directory."""
        path = Path(value).expanduser()
        if path.is_absolute() or self.config_dir is None:
            return path
        return self.config_dir / path

    def attach(self, nursery: trio.Nursery | None) -> None:
        """Called by the SDK's engine: give the plugin its instance nursery (or take it away)."""
        self._nursery = nursery

    async def initialize(self, config: Any, credentials: Mapping[str, str], namespace: str) -> None:
        """Connect and validate. ``config`` is a ``config_type`` instance (or None when the
        plugin has no config type). Raise ``InvalidArgument`` for bad fields,
        ``Unauthenticated`` when the backend rejects the credentials, ``Unavailable`` when it
        cannot be reached. Cancellation aborts initialization."""

    async def health(self) -> HealthReport:
        """The backend's health; the default reports HEALTHY. Exceptions mean UNHEALTHY."""
        return HealthReport()

    def begin_shutdown(self) -> None:
        """Called once when shutdown starts, before in-flight operations drain: end long-lived
        streams here (subscriptions), or the drain waits the whole grace period for them."""

    async def shutdown(self, grace_seconds: float) -> None:
        """Close what ``initialize`` opened. In-flight operations have already finished or been
        cancelled; the nursery is cancelled right after. Runs within ``grace_seconds``
        (cancelled when they run out)."""


def _install_request_check(cls: type[BackendPlugin], spec: OperationSpec) -> None:
    """Put the data model's request check (``prism.sdk.keyvalue``) in front of a handler that
    ``cls`` itself defines, decorated or not, so an override cannot lose it."""
    if spec.streaming or spec.method not in vars(cls):
        return  # inherited handlers were wrapped in the class that defined them
    handler = vars(cls)[spec.method]
    if getattr(handler, "__prism_checked__", None) == (spec.name, spec.features):
        return
    check = request_check(spec.name, spec.params, spec.features)
    if check is None:
        return

    @functools.wraps(handler)
    async def checked(self: BackendPlugin, params: Any, ctx: OperationContext) -> Any:
        check(self.name, self.kv_limits, params)
        return await handler(self, params, ctx)

    checked.__prism_checked__ = (spec.name, spec.features)  # type: ignore[attr-defined]
    setattr(cls, spec.method, checked)
