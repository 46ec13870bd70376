"""The reusable authentication suite (RFC-008): for every target whose backend authenticates.

Six checks, each on a user of its own (``TestBackend.add_user``) so rotating or expiring it
disturbs no other test: valid credentials; invalid (UNAUTHENTICATED, the password never in the
message); missing (INVALID_ARGUMENT); expired (a running instance's next call UNAUTHENTICATED,
and so is a new Initialize); rotated (the old password fails with UNAUTHENTICATED, a new
Initialize with the new one succeeds); a pool of 5 serving 10 concurrent operations, with the
server confirming that every connection authenticated as the user (one, for a plugin that
multiplexes everything on one connection: NATS). What "a call" is, how fast a revocation
reaches running connections, the plugin's credential names, and whether the server can tell
who each connection is (S3 cannot: it authenticates every request by its SigV4 signature, and
the checks of the server's view are left out) come from the target's ``AuthSetup``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio
from backends import Credentials, TestBackend
from kit import expect_status
from targets import Target

from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism.grpc.wire.status import GrpcError, Status
from prism.sdk.testing import PluginHarness


def acceptance_cases(
    metafunc: pytest.Metafunc, targets: list[Target]
) -> tuple[str, list[Any], list[str]]:
    chosen = [t for t in targets if t.auth is not None]
    return (
        "acceptance_label,target",
        [((t.name, "auth"), t) for t in chosen],
        [t.name for t in chosen],
    )


class Auth:
    def __init__(self, env: Any, target: Target) -> None:
        assert target.auth is not None
        assert target.backend is not None
        self.env = env
        self.target = target
        self.setup = target.auth
        self.client_name = f"prism-auth-{uuid.uuid4().hex[:10]}"
        self.backend: TestBackend

    async def start(self) -> Credentials:
        self.backend = await trio.to_thread.run_sync(self.env.backend, self.target.backend)
        name = f"auth_{uuid.uuid4().hex[:10]}"
        return await trio.to_thread.run_sync(self.backend.add_user, name)

    def harness(self, credentials: dict[str, str], pool_size: int = 2) -> PluginHarness:
        config = self.setup.config(self.env, pool_size, self.client_name)
        return PluginHarness(self.target.factory, config=config, credentials=credentials)

    async def round_trip(self, h: PluginHarness, key: str) -> None:
        await (self.setup.round_trip or kv_round_trip)(h, key)

    async def server_side_users(self) -> list[str]:
        return await trio.to_thread.run_sync(self.backend.connections, self.client_name)

    def credentials(self, name: str, secret: str | None = None) -> dict[str, str]:
        """A credentials map in the plugin's names; without ``secret``, the name alone."""
        user_key, secret_key = self.setup.credential_keys
        return {user_key: name} if secret is None else {user_key: name, secret_key: secret}


async def kv_round_trip(h: PluginHarness, key: str) -> None:
    await h.execute("set", SetRequest(key=key, value=b"authenticated"))
    got = await h.execute("get", GetRequest(key=key))
    assert got.value == b"authenticated"  # type: ignore[union-attr]


async def expect_unauthenticated(auth: Auth, h: PluginHarness, key: str) -> None:
    if not auth.setup.revocation_settles:
        with expect_status(Status.UNAUTHENTICATED):
            await auth.round_trip(h, key)
        return
    with trio.fail_after(60):  # only catches a plugin that never notices
        while True:
            try:
                await auth.round_trip(h, key)
            except GrpcError as exc:
                if exc.status == Status.UNAUTHENTICATED:
                    return
                if exc.status not in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
                    raise
                await trio.sleep(0.05)
                continue
            raise AssertionError("a call succeeded with revoked credentials")


async def expect_initialize_fails(auth: Auth, credentials: dict[str, str], status: Status) -> str:
    with expect_status(status) as caught:
        async with auth.harness(credentials):
            pass
    return caught[0].message


async def test_auth_valid_credentials(
    acceptance_label: tuple[str, str], target: Target, env: Any
) -> None:
    auth = Auth(env, target)
    user = await auth.start()
    async with auth.harness(user.as_map()) as h:
        await auth.round_trip(h, f"{auth.client_name}/valid")
        if not auth.setup.server_sees_connections:
            return
        users = await auth.server_side_users()
        assert users, "the server sees no connection of the plugin"
        assert set(users) == {user.username}


async def test_auth_invalid_credentials(
    acceptance_label: tuple[str, str], target: Target, env: Any
) -> None:
    auth = Auth(env, target)
    user = await auth.start()
    wrong = auth.credentials(user.username, "wrong-" + user.password)
    message = await expect_initialize_fails(auth, wrong, Status.UNAUTHENTICATED)
    assert "wrong-" + user.password not in message
    unknown = auth.credentials("nobody-" + user.username, user.password)
    message = await expect_initialize_fails(auth, unknown, Status.UNAUTHENTICATED)
    assert user.password not in message


async def test_auth_missing_credentials(
    acceptance_label: tuple[str, str], target: Target, env: Any
) -> None:
    auth = Auth(env, target)
    user = await auth.start()
    message = await expect_initialize_fails(auth, {}, Status.INVALID_ARGUMENT)
    assert "credential" in message
    await expect_initialize_fails(auth, auth.credentials(user.username), Status.INVALID_ARGUMENT)


async def test_auth_expired_credentials(
    acceptance_label: tuple[str, str], target: Target, env: Any
) -> None:
    auth = Auth(env, target)
    user = await auth.start()
    async with auth.harness(user.as_map()) as h:
        await auth.round_trip(h, f"{auth.client_name}/before")
        await trio.to_thread.run_sync(auth.backend.expire_credentials, user.username)
        await expect_unauthenticated(auth, h, f"{auth.client_name}/after")
    await expect_initialize_fails(auth, user.as_map(), Status.UNAUTHENTICATED)


async def test_auth_rotated_credentials(
    acceptance_label: tuple[str, str], target: Target, env: Any
) -> None:
    auth = Auth(env, target)
    old = await auth.start()
    async with auth.harness(old.as_map()) as h:
        await auth.round_trip(h, f"{auth.client_name}/before")
        new = await trio.to_thread.run_sync(auth.backend.rotate_credentials, old.username)
        await expect_unauthenticated(auth, h, f"{auth.client_name}/after")
    async with auth.harness(new.as_map()) as h:  # re-Initialize with the new credentials
        await auth.round_trip(h, f"{auth.client_name}/rotated")
    await expect_initialize_fails(auth, old.as_map(), Status.UNAUTHENTICATED)


async def test_auth_pool_authenticates_every_connection(
    acceptance_label: tuple[str, str], target: Target, env: Any
) -> None:
    auth = Auth(env, target)
    user = await auth.start()
    async with auth.harness(user.as_map(), pool_size=5) as h:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(auth.round_trip, h, f"{auth.client_name}/{i}")
        if not auth.setup.server_sees_connections:
            return
        users = await auth.server_side_users()
        expected = 1 if auth.setup.single_connection else 5
        assert users == [user.username] * expected, f"the server sees {users}"
