"""Server interceptors: code that runs around every RPC of a server.

An interceptor is a :class:`ServerInterceptor` given to ``Server(..., interceptors=[...])``.
For each RPC to a registered method, the server awaits every interceptor's :meth:`before`, in
order, then the handler; when the RPC is over it calls :meth:`after` of those interceptors, in
reverse order, with the final status and the time it took (:class:`CallOutcome`). ``before``
may reject the call by raising a :class:`~prism.grpc.GrpcError`; the handler and the
remaining ``before`` hooks then do not run. Per-call values an interceptor attaches for the
handler (an identity, a permit) go in ``call.state`` under a typed :class:`CallKey`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from prism.grpc.wire.status import Status

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall

T = TypeVar("T")
D = TypeVar("D")


class CallKey(Generic[T]):
    """A typed key into :attr:`ServerCall.state`: ``IDENTITY: CallKey[User] = CallKey("identity")``.

    Keys compare by identity, so two libraries' keys never collide whatever their names.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"CallKey({self.name!r})"


class CallState:
    """Values attached to one call, by :class:`CallKey`; typed access for the handler."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[CallKey[Any], Any] = {}

    def __getitem__(self, key: CallKey[T]) -> T:
        value: T = self._values[key]
        return value

    def __setitem__(self, key: CallKey[T], value: T) -> None:
        self._values[key] = value

    def __contains__(self, key: CallKey[Any]) -> bool:
        return key in self._values

    @overload
    def get(self, key: CallKey[T]) -> T | None: ...

    @overload
    def get(self, key: CallKey[T], default: D) -> T | D: ...

    def get(self, key: CallKey[T], default: Any = None) -> Any:
        return self._values.get(key, default)


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How an RPC ended, as :meth:`ServerInterceptor.after` sees it."""

    #: The status the client was sent (CANCELLED when the client reset the stream).
    status: Status
    message: str
    #: Seconds from the start of the first ``before`` to the end of the RPC (Trio's clock).
    duration: float
    #: What ended the handler (or a ``before`` hook) when that was an exception: the
    #: GrpcError it raised, or the bug that became UNKNOWN. None otherwise.
    exception: BaseException | None = None


class ServerInterceptor:
    """Subclass and override :meth:`before`, :meth:`after` or both (the defaults do nothing).

    One instance serves every RPC of the server, concurrently: keep per-call values in
    ``call.state``, not on the interceptor.
    """

    async def before(self, call: ServerCall) -> None:
        """Runs before the handler, inside the call's deadline (and cancelled with it).

        ``call.method``, ``call.metadata`` and ``call.peer`` (address, TLS client certificate,
        ``peer.identity``) say who asks for what. Raise a GrpcError to end the call with its
        status instead of running the handler; any other exception is a bug: the call ends
        with UNKNOWN (logged with a trace id), the connection and the server carry on.
        """

    def after(self, call: ServerCall, outcome: CallOutcome) -> None:
        """Runs once the RPC is over, whatever ended it (handler return or exception,
        deadline, client reset, a ``before`` that rejected it): also for the interceptor
        whose ``before`` raised. Synchronous: it runs when the response is already sent, and
        must not block. An exception here is logged; the call's outcome stays as it was.
        """
