"""Who may use the admin port, for gRPC and HTTP alike.

A caller is authenticated by any one of:

- the Unix socket (``admin.unix_socket``): it is created with mode 0600, so the file system has
  already decided that only the proxy's user (and root) can connect;
- a client certificate verified against ``admin.tls.client_ca`` (the TLS handshake refuses a
  connection without one, so every call on such a listener has it);
- ``authorization: Bearer TOKEN`` (gRPC metadata or HTTP header) equal to ``admin.token``,
  compared in constant time (``hmac.compare_digest``).

A caller with none of these is anonymous: refused (UNAUTHENTICATED, HTTP 401) for every change,
and for reads (list, status, /metrics) unless ``admin.anonymous_read``. A wrong token is refused
even for reads: it is a mistake worth reporting, not an anonymous call. ``/healthz`` and the
gRPC health and reflection services stay open (a probe has no credentials and learns nothing
it could misuse). Messages never contain what the caller sent.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prism.grpc.interceptor import CallKey, ServerInterceptor
from prism.grpc.transport import PeerInfo
from prism.grpc.wire.status import Unauthenticated
from prism.proxy.adminaudit import record_admin

if TYPE_CHECKING:
    from prism.grpc.call import ServerCall

__all__ = ["ADMIN_CALLER", "READS", "AdminAuth", "AdminAuthInterceptor", "AdminCaller"]

ADMIN_SERVICE = "/prism.admin.v1.Admin/"
#: Admin RPCs that change nothing (what ``anonymous_read`` opens).
READS = frozenset({"ListNamespaces", "GetNamespace", "GetStatus"})


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """Who called, as the audit log names it: ``unix-socket``, ``token``, ``cert:NAME`` or
    ``anonymous``, and from where."""

    name: str
    address: str

    @property
    def authenticated(self) -> bool:
        return self.name != "anonymous"


ADMIN_CALLER: CallKey[AdminCaller] = CallKey("admin-caller")


class AdminAuth:
    """The admin port's authentication. ``token`` is the resolved ``admin.token`` (None: no
    token accepted); a config reload may replace it (:attr:`token`)."""

    def __init__(self, token: str | None, *, anonymous_read: bool = False) -> None:
        self.token = token
        self.anonymous_read = anonymous_read

    def caller(self, peer: PeerInfo, authorization: str | None) -> AdminCaller:
        """Who this is; Unauthenticated when the caller sent credentials that are wrong. On
        the Unix socket whatever was sent is not looked at: connecting was the proof."""
        if peer.transport == "unix":
            return AdminCaller("unix-socket", peer.address)
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            token = self.token
            if (
                scheme.lower() != "bearer"
                or token is None
                or not hmac.compare_digest(credential.strip().encode(), token.encode())
            ):
                record_admin(
                    "authenticate", "", AdminCaller("anonymous", peer.address), "UNAUTHENTICATED"
                )
                raise Unauthenticated("the admin token is not valid")
            return AdminCaller("token", peer.address)
        if peer.certificate:
            return AdminCaller(f"cert:{peer.identity or '?'}", peer.address)
        return AdminCaller("anonymous", peer.address)

    def check(self, caller: AdminCaller, action: str, *, read: bool) -> None:
        """Unauthenticated unless ``caller`` may do ``action`` (a read or a change)."""
        if caller.authenticated or (read and self.anonymous_read):
            return
        record_admin(action, "", caller, "UNAUTHENTICATED")
        raise Unauthenticated(
            "the admin API needs credentials: send 'authorization: Bearer <admin.token>' "
            "(prism: --token-file or $PRISM_ADMIN_TOKEN), a client certificate "
            "(admin.tls.client_ca), or use the admin Unix socket"
        )


class AdminAuthInterceptor(ServerInterceptor):
    """Authenticates every ``prism.admin.v1.Admin`` call on the admin gRPC server; the caller
    is left in ``call.state[ADMIN_CALLER]`` for the handler's audit record."""

    def __init__(self, auth: AdminAuth) -> None:
        self.auth = auth

    async def before(self, call: ServerCall) -> None:
        if not call.method.startswith(ADMIN_SERVICE):
            return  # health, reflection: open
        authorization = None
        for key, value in call.metadata:
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
                break
        caller = self.auth.caller(call.peer, authorization)
        method = call.method[len(ADMIN_SERVICE) :]
        self.auth.check(caller, method, read=method in READS)
        call.state[ADMIN_CALLER] = caller
