"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), with httpx on Trio.

No maintained etcd client runs on Trio (they are sync, asyncio or grpc.aio), and the proxy needs
only a few calls: range, put, delete, txn (compare on ``mod_revision``), watch and leases. The
gateway speaks JSON with keys and values in base64 and int64 fields as strings; it leaves out
fields at their default (``succeeded: false``, a PUT event's ``type``, a zero ``TTL``). This
module hides all of that behind bytes and ints.

Errors are :class:`EtcdError` and say which operation failed against which endpoint, and why;
they never hold a value (a config document may hold credentials), a password or a token. No
call has a timeout of its own: the caller's cancel scope is the deadline.

Connections use TCP keepalive (:data:`KEEPALIVE_IDLE`, :data:`KEEPALIVE_INTERVAL`,
:data:`KEEPALIVE_COUNT`) and ``TCP_USER_TIMEOUT``: a watch only reads, so without probes a
connection whose peer vanished without a RST (a partition, a host gone, etcd restarted while
the network was cut) would wait for events forever. With them the kernel ends it within about
:data:`KEEPALIVE_IDLE` + :data:`KEEPALIVE_INTERVAL` * :data:`KEEPALIVE_COUNT` seconds of
silence and the watch fails with EtcdUnavailable (its caller resumes it).

:class:`EtcdAccess` holds TLS (a CA, a client certificate) and etcd's user/password auth: the
client authenticates (``/v3/auth/authenticate``) before its first call, sends the token in the
``Authorization`` header, and authenticates again when etcd says the token is no longer valid.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

__all__ = [
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE",
    "KEEPALIVE_INTERVAL",
    "Compare",
    "EtcdAccess",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "LeaseNotFound",
    "Put",
    "RangeResult",
    "TxnResult",
    "WatchBatch",
    "WatchCompacted",
    "WatchEvent",
    "prefix_end",
]

#: Largest single line read from a watch stream (one response; a config document is small).
MAX_WATCH_LINE = 8 << 20

#: Seconds of silence on a connection before the kernel probes the peer.
KEEPALIVE_IDLE = 5
#: Seconds between two unanswered probes.
KEEPALIVE_INTERVAL = 2
#: Unanswered probes after which the connection is dead (and, as TCP_USER_TIMEOUT, how long
#: sent data may stay unacknowledged: idle + interval * count seconds).
KEEPALIVE_COUNT = 3

# etcd's answers when a token expired or was revoked (the client authenticates again).
_TOKEN_ERRORS = ("invalid auth token", "user name is empty")


class EtcdError(Exception):
    """An etcd request failed. ``operation``: what was asked (``range /prism/config``);
    ``code``: etcd's gRPC status code when it answered (None when it could not be reached)."""

    def __init__(self, operation: str, endpoint: str, reason: str, code: int | None = None):
        super().__init__(f"etcd {operation} at {endpoint}: {reason}")
        self.operation = operation
        self.endpoint = endpoint
        self.reason = reason
        self.code = code


class EtcdUnavailable(EtcdError):
    """etcd could not be reached, or the connection broke before it answered."""


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted away; ``compact_revision`` is the oldest one
    still kept. Read the key again, then watch from that read's revision + 1."""

    def __init__(self, operation: str, endpoint: str, compact_revision: int) -> None:
        super().__init__(
            operation, endpoint, f"revision compacted (oldest kept: {compact_revision})"
        )
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def __repr__(self) -> str:
        # The value may be a config document with credentials in it.
        size = len(self.value)
        return f"KeyValue(key={self.key!r}, mod_revision={self.mod_revision}, value=<{size} B>)"


@dataclass(frozen=True, slots=True)
class RangeResult:
    """``revision``: the store's revision when it was read (watch from ``revision + 1``)."""

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response, in revision order; ``revision``: the store's."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """The txn condition ``mod_revision(key) == mod_revision`` (0: the key does not exist)."""

    key: bytes | str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes | str
    value: bytes | str
    lease: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded``: the compares held and ``success`` ran; otherwise ``failure`` ran, and
    ``kvs`` is what its ranges read (the key as it is now)."""

    succeeded: bool
    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """How to reach a secured etcd. ``ca``: the CA bundle that signed etcd's certificate
    (https endpoints; the system roots when None); ``cert``/``key``: a client certificate
    (etcd's ``--client-cert-auth``); ``user``/``password``: etcd's auth (the password is
    never shown, in a repr or an error)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS to etcd: its certificate checked against ``ca`` and the endpoint's host name."""
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if self.ca is None else str(self.ca)
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


def _socket_options() -> list[tuple[int, int, int]]:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # Linux names; elsewhere the system's keepalive defaults apply.
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", 1000 * (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT)),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _b64(data: bytes | str) -> str:
    return base64.b64encode(_bytes(data)).decode("ascii")


def _shown(key: bytes | str) -> str:
    return _bytes(key).decode("utf-8", "backslashreplace")


def prefix_end(prefix: bytes | str) -> bytes:
    """The ``range_end`` that makes a range or watch cover every key starting with ``prefix``."""
    raw = bytearray(_bytes(prefix))
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def _kv(raw: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _revision(answer: Mapping[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _put_request(op: Put) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
    if op.lease:
        request["lease"] = str(op.lease)
    return request


class EtcdClient:
    """One etcd endpoint, ``http://HOST:PORT`` (or https), reached as ``access`` says. An
    async context manager: its connections are closed when the block ends."""

    def __init__(
        self,
        endpoint: str,
        *,
        access: EtcdAccess | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.access = access or EtcdAccess()
        if (self.access.user is None) != (self.access.password is None):
            raise ValueError("etcd auth needs both a user and a password")
        self._token: str | None = None
        if http is None:
            verify: ssl.SSLContext | bool = True
            if self.endpoint.startswith("https://"):
                verify = self.access.ssl_context()
            transport = httpx.AsyncHTTPTransport(verify=verify, socket_options=_socket_options())
            # No timeouts of its own (the caller's cancel scope is the deadline): a watch
            # waits for events for as long as its caller wants.
            http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))
        self._http = http

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _headers(self) -> dict[str, str]:
        """The auth token's header (authenticating first when there is none yet)."""
        if self.access.user is None:
            return {}
        if self._token is None:
            body = {"name": self.access.user, "password": self.access.password}
            operation = f"authenticate as {self.access.user}"
            answer = await self._post("auth/authenticate", body, operation, {})
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise EtcdError(operation, self.endpoint, "etcd sent no token (is auth enabled?)")
            self._token = token
        return {"Authorization": self._token}

    async def _post(
        self, path: str, body: Mapping[str, Any], operation: str, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        try:
            response = await self._http.post(
                f"{self.endpoint}/v3/{path}", json=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(operation, self.endpoint, _reason(exc)) from None
        answer = _json(response.content)
        if response.status_code != 200 or "error" in answer:
            raise _error(operation, self.endpoint, response.status_code, answer)
        return answer

    async def _call(self, path: str, body: Mapping[str, Any], operation: str) -> dict[str, Any]:
        try:
            return await self._post(path, body, operation, await self._headers())
        except EtcdError as exc:
            if not self._stale_token(exc):
                raise
        # The token expired (or etcd restarted and forgot it): once more with a new one.
        return await self._post(path, body, operation, await self._headers())

    def _stale_token(self, exc: EtcdError) -> bool:
        """Whether ``exc`` says the token is no longer valid; if so, forget it."""
        if self._token is None or not any(text in exc.reason for text in _TOKEN_ERRORS):
            return False
        self._token = None
        return True

    async def range(
        self, key: bytes | str, *, prefix: bool = False, revision: int = 0
    ) -> RangeResult:
        """The key (or, with ``prefix``, every key under it), at ``revision`` (0: latest)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if revision:
            body["revision"] = str(revision)
        answer = await self._call("kv/range", body, f"range {_shown(key)}")
        return RangeResult(_revision(answer), tuple(_kv(kv) for kv in answer.get("kvs", ())))

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """Write ``value`` at ``key`` (attached to ``lease`` if given); the new revision."""
        answer = await self._call(
            "kv/put", _put_request(Put(key, value, lease)), f"put {_shown(key)}"
        )
        return _revision(answer)

    async def delete(self, key: bytes | str, *, prefix: bool = False) -> int:
        """Delete the key (or every key under it); the number deleted."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        answer = await self._call("kv/deleterange", body, f"delete {_shown(key)}")
        return int(answer.get("deleted", 0))

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Put], failure: Sequence[bytes | str]
    ) -> TxnResult:
        """If every compare holds, run the ``success`` puts; else range the ``failure`` keys."""
        body = {
            "compare": [
                {
                    "target": "MOD",
                    "result": "EQUAL",
                    "key": _b64(c.key),
                    "mod_revision": str(c.mod_revision),
                }
                for c in compare
            ],
            "success": [{"request_put": _put_request(op)} for op in success],
            "failure": [{"request_range": {"key": _b64(key)}} for key in failure],
        }
        keys = ", ".join(_shown(c.key) for c in compare) or "-"
        answer = await self._call("kv/txn", body, f"txn on {keys}")
        kvs = tuple(
            _kv(kv)
            for response in answer.get("responses", ())
            for kv in response.get("response_range", {}).get("kvs", ())
        )
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), kvs)

    @asynccontextmanager
    async def watch(
        self, key: bytes | str, *, start_revision: int, prefix: bool = False
    ) -> AsyncIterator[AsyncIterator[WatchBatch]]:
        """``async with client.watch(key, start_revision=r) as batches: async for batch in
        batches``: every change to the key (or the keys under it) from revision ``r`` on, in
        order. The iterator raises WatchCompacted when ``r`` was compacted away and
        EtcdUnavailable when the stream breaks (resume from the last revision seen + 1); it
        never ends by itself. Leaving the block (or cancellation) closes the stream."""
        operation = f"watch {_shown(key)} from revision {start_revision}"
        request: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision)}
        if prefix:
            request["range_end"] = _b64(prefix_end(key))
        url = f"{self.endpoint}/v3/watch"
        headers = await self._headers()
        try:
            async with self._http.stream(
                "POST", url, json={"create_request": request}, headers=headers
            ) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    raise _error(operation, self.endpoint, response.status_code, _json(body))
                yield self._batches(response, operation)
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(operation, self.endpoint, _reason(exc)) from None
        except EtcdError as exc:
            self._stale_token(exc)  # the next watch authenticates again
            raise

    async def _batches(self, response: httpx.Response, operation: str) -> AsyncIterator[WatchBatch]:
        try:
            async for line in response.aiter_lines():
                if len(line) > MAX_WATCH_LINE:
                    raise EtcdError(operation, self.endpoint, "watch response too large")
                if not line.strip():
                    continue
                answer = _json(line.encode())
                if "error" in answer:
                    raise _error(operation, self.endpoint, 200, answer["error"])
                result = answer.get("result", {})
                compacted = int(result.get("compact_revision", 0))
                if compacted:
                    raise WatchCompacted(operation, self.endpoint, compacted)
                if result.get("canceled"):
                    reason = result.get("cancel_reason") or "the watch was canceled"
                    raise EtcdError(operation, self.endpoint, str(reason))
                events = tuple(
                    WatchEvent(
                        "delete" if event.get("type") == "DELETE" else "put", _kv(event["kv"])
                    )
                    for event in result.get("events", ())
                )
                if events:
                    yield WatchBatch(_revision(result), events)
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(operation, self.endpoint, _reason(exc)) from None
        raise EtcdUnavailable(operation, self.endpoint, "the watch stream ended")

    async def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        answer = await self._call("lease/grant", {"TTL": str(ttl)}, f"lease grant ({ttl} s)")
        return int(answer["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL in seconds. LeaseNotFound when it expired or was revoked."""
        operation = f"lease keepalive {lease:x}"
        answer = await self._call("lease/keepalive", {"ID": str(lease)}, operation)
        ttl = int(answer.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(operation, self.endpoint, "the lease expired or was revoked")
        return ttl

    async def lease_revoke(self, lease: int) -> None:
        """Revoke ``lease``: the keys attached to it are deleted. LeaseNotFound if it is gone."""
        await self._call("lease/revoke", {"ID": str(lease)}, f"lease revoke {lease:x}")


def _json(data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data)
    except ValueError:
        return {"error": "not a JSON answer (is this etcd's client URL?)"}
    return answer if isinstance(answer, dict) else {"error": "not a JSON object"}


def _error(operation: str, endpoint: str, status: int, answer: Any) -> EtcdError:
    if not isinstance(answer, Mapping):
        answer = {}
    reason = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
    code = answer.get("code")
    code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    if "lease not found" in reason:
        return LeaseNotFound(operation, endpoint, reason, code)
    if code == 14 or status in (502, 503):  # UNAVAILABLE: no leader, shutting down, ...
        return EtcdUnavailable(operation, endpoint, reason, code)
    return EtcdError(operation, endpoint, reason, code)


def _reason(exc: httpx.HTTPError) -> str:
    # httpx's messages name the URL at most, and our URLs carry no user info. An empty one
    # (a failed TLS handshake) is explained by its cause: certificate verify failed, ...
    cause: BaseException | None = exc
    while cause is not None and not str(cause):
        cause = cause.__cause__ or cause.__context__
    text = str(cause) if cause is not None else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
