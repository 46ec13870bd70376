"""ClickHouse's HTTP interface with httpx on Trio: one POST per statement, errors to statuses.

A statement without parameters is the request body. A statement with parameters is sent as
multipart/form-data: the statement in the URL's ``query``, the parameters as the external table
``_prism_params`` (statements.py, values.py). The user and password go in the Authorization
header (HTTP Basic) of every request — never in the URL, which httpx logs.

``wait_end_of_query=1`` makes the server finish the statement before it answers, so an error
met halfway is an HTTP error, never a 200 with an error at the end of the rows.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from prism.sdk import (
    AlreadyExists,
    DeadlineExceeded,
    GrpcError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from prism_plugin_clickhouse.statements import PARAMS_TABLE

__all__ = ["HttpSettings", "Server", "error_for"]

_CODE = re.compile(rb"Code: (\d+)")

# ClickHouse's error codes (dbms/src/Common/ErrorCodes.cpp) → the contract's statuses.
_UNAUTHENTICATED = {192, 193, 194, 195, 516}  # unknown user, wrong/required password, IP
_PERMISSION = {164, 497}  # readonly, access denied
_DEADLINE = {159, 160}  # timeout exceeded, too slow
_EXHAUSTED = {158, 241, 396}  # too many rows, memory limit, too many rows or bytes
_UNAVAILABLE = {202, 252, 210, 209}  # too many queries, too many parts, network
_ALREADY = {57, 82}  # table / database already exists
_UNIMPLEMENTED = {1, 48}  # unsupported method, not implemented
_INVALID = {
    6, 8, 10, 15, 16, 20, 21, 25, 26, 27, 32, 33, 36, 38, 41, 42, 43, 44, 46, 47, 49, 51, 53,
    60, 62, 69, 70, 72, 73, 80, 81, 107, 115, 117, 130, 131, 132, 153, 169, 179, 181, 182, 183,
    184, 190, 215, 349, 352, 386, 395,
}  # fmt: skip


def error_for(status_code: int, body: bytes, where: str = "") -> GrpcError:
    """The status of a failed answer; its message is the server's (it never holds the
    password: the server does not see it in anything it echoes)."""
    text = body.decode("utf-8", "replace").strip()
    text = text.split(", e.what() = ", 1)[0]
    found = _CODE.search(body)
    code = int(found.group(1)) if found else 0
    message = f"{where}ClickHouse: {text}"[:2000]
    if code in _UNAUTHENTICATED or status_code == 401:
        return Unauthenticated(message)
    if code in _PERMISSION or status_code == 403:
        return PermissionDenied(message)
    if code in _DEADLINE:
        return DeadlineExceeded(message)
    if code in _EXHAUSTED:
        return ResourceExhausted(message)
    if code in _UNAVAILABLE or status_code in (502, 503, 504):
        return Unavailable(message)
    if code in _ALREADY:
        return AlreadyExists(message)
    if code in _UNIMPLEMENTED:
        return Unimplemented(message)
    if code in _INVALID or status_code == 400:
        return InvalidArgument(message)
    return Unknown(message)


@dataclass(frozen=True)
class HttpSettings:
    base_url: str
    username: str
    password: str
    database: str
    pool_size: int
    connect_timeout: float
    keepalive: float
    query_timeout_s: int
    max_rows: int
    client_name: str
    verify: ssl.SSLContext | bool

    def __repr__(self) -> str:
        return f"HttpSettings({self.base_url!r}, user={self.username!r}, password withheld)"


class Server:
    """A pool of HTTP connections to one server, with the user's credentials."""

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        limits = httpx.Limits(
            max_connections=settings.pool_size,
            max_keepalive_connections=settings.pool_size,
            keepalive_expiry=settings.keepalive,
        )
        # Only connecting has a limit of its own: a statement's deadline is the caller's
        # cancel scope, and max_execution_time on the server.
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            auth=httpx.BasicAuth(settings.username, settings.password),
            limits=limits,
            timeout=httpx.Timeout(None, connect=settings.connect_timeout),
            headers={"User-Agent": settings.client_name},
            verify=settings.verify,
            trust_env=False,
        )

    def _query_settings(self, result_rows: bool) -> dict[str, str]:
        s = self.settings
        params = {"wait_end_of_query": "1", "max_execution_time": str(s.query_timeout_s)}
        if s.database:
            params["database"] = s.database
        if result_rows:
            params["max_result_rows"] = str(s.max_rows)
            params["result_overflow_mode"] = "throw"
        return params

    async def post(
        self,
        sql: str,
        *,
        structure: str = "",
        data: bytes = b"",
        result_rows: bool = False,
        where: str = "",
    ) -> bytes:
        """Run ``sql`` (with the external table when ``structure`` is set); the answer's body.
        Cancellation closes the request's connection (the server then stops the statement)."""
        params: Mapping[str, str] = self._query_settings(result_rows)
        try:
            if structure:
                response = await self._client.post(
                    "/",
                    params={
                        **params,
                        "query": sql,
                        f"{PARAMS_TABLE}_structure": structure,
                        f"{PARAMS_TABLE}_format": "TabSeparated",
                    },
                    files={PARAMS_TABLE: (PARAMS_TABLE, data, "text/tab-separated-values")},
                )
            else:
                response = await self._client.post("/", params=params, content=sql.encode())
        except httpx.TransportError as exc:
            raise Unavailable(
                f"{where}ClickHouse at {self.settings.base_url} unreachable: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if response.status_code != 200:
            raise error_for(response.status_code, response.content, where)
        return response.content

    async def aclose(self) -> None:
        await self._client.aclose()
