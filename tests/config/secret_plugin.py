"""A plugin for the secrets tests: it answers ``get(KEY)`` with the credential KEY it was
initialized with, so a test can see what the proxy sent, and refuses to start when told to
(``config.refuse``), quoting nothing."""

from __future__ import annotations

from collections.abc import Mapping

from prism._proto.prism.data.v1 import GetRequest, GetResponse
from prism.sdk import BackendPlugin, NotFound, OperationContext, Unauthenticated, operation


class CredentialEcho(BackendPlugin):
    name = "credential_echo"
    config_type = None

    def __init__(self) -> None:
        super().__init__()
        self.credentials: Mapping[str, str] = {}

    async def initialize(
        self, config: None, credentials: Mapping[str, str], namespace: str
    ) -> None:
        if credentials.get("token") == "rejected":
            raise Unauthenticated(f"the backend refused token {credentials['token']}")
        self.credentials = dict(credentials)
        self.logger.info("initialized with credentials %r", credentials)

    @operation("get", params=GetRequest, result=GetResponse)
    async def get(self, params: GetRequest, ctx: OperationContext) -> GetResponse:
        if params.key not in self.credentials:
            raise NotFound(f"no credential {params.key!r}")
        return GetResponse(found=True, value=self.credentials[params.key].encode())
