"""What one client call carries through the request pipeline (:mod:`prism.proxy.pipeline`).

A :class:`RequestInfo` is made for every DataProxy call by the pipeline's interceptor, before
anything else runs, and kept in ``call.state[REQUEST]``: the stages fill it in as they learn
(the trace context, the caller's :class:`Identity`, then the namespace and operation the front
door reads from the request bytes), and the hooks that run once the call is over (metrics,
audit, tracing) read it there with the call's final status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prism.grpc.interceptor import CallKey
from prism.grpc.transport import PeerInfo

__all__ = ["ANONYMOUS", "REQUEST", "Identity", "IdentitySource", "RequestInfo", "TraceContext"]

IdentitySource = Literal["mtls", "jwt", "anonymous"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as authentication established it; what authorization rules match."""

    #: The principal: a certificate's SAN URI/DNS or CN, a token's ``sub``; "anonymous".
    subject: str
    #: How it was established.
    source: IdentitySource
    #: A verified token's claims (empty for certificates and anonymous callers).
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: OAuth2 scopes (a token's ``scope`` / ``scp``).
    scopes: frozenset[str] = frozenset()
    #: A client certificate's subject alternative names, as ``("URI", "spiffe://...")``.
    sans: tuple[tuple[str, str], ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.source == "anonymous"


#: The identity of a caller that presented no credentials.
ANONYMOUS = Identity("anonymous", "anonymous")


@dataclass(slots=True)
class TraceContext:
    """W3C trace context of one call (``traceparent``: version-trace_id-parent_id-flags).

    Made once per call by the tracing stage and never changed after (treat it as frozen: it is
    not declared so because a frozen dataclass's ``__init__`` costs ~2.3 µs, a plain one's
    ~0.5 µs, on every call)."""

    trace_id: str  # 32 lower-case hex digits
    #: The proxy's own span for this call: the parent of what it calls (plugins).
    span_id: str  # 16 hex digits
    #: The client's span (``traceparent``'s parent-id), "" when the proxy started the trace.
    parent_span_id: str = ""
    flags: int = 0
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


class RequestInfo:
    """One DataProxy call as the pipeline sees it (module docstring).

    Stages write the fields they own and read the others; nobody else writes them. Empty
    ``namespace`` and ``operation`` mean the call ended before the front door read them
    (refused by authentication, or a malformed request).
    """

    __slots__ = (
        "identity",
        "metrics",
        "namespace",
        "operation",
        "peer",
        "started",
        "stream",
        "trace",
    )

    def __init__(self, peer: PeerInfo, started: float, *, stream: bool = False) -> None:
        self.peer = peer
        #: trio.current_time() when the call reached the pipeline.
        self.started = started
        #: ExecuteStream (True) or Execute.
        self.stream = stream
        self.namespace = ""
        self.operation = ""
        #: Set by authentication; None until then (and for a call it refused).
        self.identity: Identity | None = None
        #: Set by tracing: the client's trace context, or one the proxy started.
        self.trace: TraceContext | None = None
        #: The metrics series this call counts in (ProxyMetrics' business).
        self.metrics: Any = None

    def __repr__(self) -> str:
        who = self.identity.subject if self.identity is not None else None
        return (
            f"RequestInfo(namespace={self.namespace!r}, operation={self.operation!r}, "
            f"identity={who!r}, peer={self.peer.address!r}, stream={self.stream})"
        )


#: Where a call's RequestInfo is kept: ``call.state[REQUEST]``.
REQUEST: CallKey[RequestInfo] = CallKey("prism.proxy.request")
