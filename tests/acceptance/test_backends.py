"""The backend fixtures themselves, on instances of their own (the session's are shared):
each server starts in a temporary directory on a free loopback port, answers its own client,
resets, rotates and expires credentials as the auth suite needs, reports who each connection
authenticated as, and leaves nothing behind when stopped."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from backends import (
    BACKENDS,
    BackendFailed,
    ClickHouseServer,
    Credentials,
    MemcachedServer,
    NatsServer,
    PostgresServer,
    RedisServer,
    SeaweedServer,
    TansuBroker,
    TestBackend,
)
from targets import Target


def acceptance_cases(
    metafunc: pytest.Metafunc, targets: list[Target]
) -> tuple[str, list[Any], list[str]]:
    """The backends of the selected targets, and those named by --only (all without it)."""
    only = set(metafunc.config.getoption("--only"))
    kinds = (
        {t.backend for t in targets if t.backend} | (only & set(BACKENDS))
        if only
        else set(BACKENDS)
    )
    wanted = getattr(metafunc.function, "kinds", tuple(BACKENDS))
    chosen = [BACKENDS[k] for k in BACKENDS if k in kinds and k in wanted]
    return "backend_class", chosen, [cls.kind for cls in chosen]


@pytest.fixture
def fresh(backend_class: type[TestBackend]) -> Iterator[TestBackend]:
    backend = backend_class()
    try:
        backend.start()
        yield backend
    finally:
        backend.stop()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_backend_starts_on_loopback_and_stops_leaving_nothing(fresh: TestBackend) -> None:
    connection = fresh.connection
    assert connection["host"] == "127.0.0.1"
    assert listening(connection["port"])
    server = fresh.server  # type: ignore[attr-defined]
    directory, process = server.directory, server.process
    assert directory.is_dir()
    fresh.stop()
    assert process.poll() is not None
    assert not directory.exists()
    assert not listening(connection["port"])
    fresh.stop()  # idempotent


def _write_and_read(backend: TestBackend) -> object:
    if isinstance(backend, RedisServer):
        client = backend.client(backend.credentials)
        client.set("k", b"v")
        return client.get("k")
    if isinstance(backend, PostgresServer):
        with backend.client(backend.credentials) as db:
            db.execute("CREATE TABLE IF NOT EXISTS t (v text)")
            db.execute("INSERT INTO t VALUES ('v')")
            return db.execute("SELECT v FROM t").fetchall()
    if isinstance(backend, NatsServer):
        return backend.run(None, _nats_write_and_read)
    if isinstance(backend, TansuBroker):
        return backend.run(_kafka_write_and_read(backend.connection["port"]))
    if isinstance(backend, SeaweedServer):
        backend.s3("PUT", f"/{backend.BUCKET}/k", b"v", credentials=backend.credentials)
        return backend.value("k")
    if isinstance(backend, ClickHouseServer):
        backend.query(
            "CREATE TABLE IF NOT EXISTS t (v String) ENGINE = Memory", backend.credentials
        )
        backend.query("INSERT INTO t VALUES ('v')", backend.credentials)
        return backend.rows("SELECT v FROM t")
    assert isinstance(backend, MemcachedServer)
    backend.client().set("k", b"v")
    return backend.client().get("k")


def _gone(backend: TestBackend) -> bool:
    if isinstance(backend, RedisServer):
        return backend.client(backend.credentials).get("k") is None
    if isinstance(backend, SeaweedServer):
        return backend.value("k") is None
    if isinstance(backend, PostgresServer):
        with backend.client(backend.credentials) as db:
            found = db.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone()
            return found == (0,)
    if isinstance(backend, NatsServer):
        return bool(backend.run(None, _nats_no_streams))
    if isinstance(backend, TansuBroker):
        return not backend.run(_kafka_topics)
    if isinstance(backend, ClickHouseServer):
        return backend.rows("SELECT count() FROM system.tables WHERE database = 'default'") == [
            (0,)
        ]
    assert isinstance(backend, MemcachedServer)
    return backend.client().get("k") is None


def test_backend_reset_forgets_everything(fresh: TestBackend) -> None:
    assert _write_and_read(fresh) in (b"v", [("v",)])
    fresh.reset()  # (nats: the stream deleted)
    assert _gone(fresh)
    assert _write_and_read(fresh) in (b"v", [("v",)])  # usable again after the reset


def test_backend_credentials_rotate_and_expire(backend_class: type[TestBackend]) -> None:
    backend = backend_class()
    try:
        backend.start()
        user = backend.add_user("rotating")
        held = backend.client(user)  # type: ignore[attr-defined]
        if isinstance(backend, RedisServer):
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            held = redis.Redis(**backend.connection, **user.as_map(), retry=Retry(NoBackoff(), 0))
            held.client_setname("held")
            assert backend.connections("held") == ["rotating"]
        new = backend.rotate_credentials("rotating")
        assert new.password != user.password
        with pytest.raises(Exception, match=r"(?i)invalid|auth|password"):
            _connect(backend, user)  # the old password no longer works
        _connect(backend, new)
        with pytest.raises(Exception):  # noqa: B017,PT011 - the old session was closed
            _use(held)
        backend.expire_credentials("rotating")
        with pytest.raises(Exception, match=r"(?i)invalid|auth|password|disabled|expired"):
            _connect(backend, new)
        assert "withheld" in repr(new)
        assert new.password not in repr(new)
    finally:
        backend.stop()


async def _nats_write_and_read(nc: Any) -> bytes:
    js = nc.jetstream()
    await js.add_stream(name="t", subjects=["t.v"])
    await js.publish("t.v", b"v")
    return bytes((await js.get_last_msg("t", "t.v")).data)


async def _nats_no_streams(nc: Any) -> bool:
    return not await nc.jetstream().streams_info()


def _kafka_write_and_read(port: int) -> Any:
    async def action(admin: Any) -> bytes:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        servers = f"127.0.0.1:{port}"
        producer = AIOKafkaProducer(bootstrap_servers=servers)
        await producer.start()
        try:
            await producer.send_and_wait("t", b"v", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition("t", 0)])
            record = await consumer.getone()
        finally:
            await consumer.stop()
        return bytes(record.value)

    return action


async def _kafka_topics(admin: Any) -> list[str]:
    return list(await admin.list_topics())


def _connect(backend: TestBackend, credentials: object) -> None:
    client = backend.client(credentials)  # type: ignore[attr-defined]
    _use(client)
    client.close()


def _use(client: object) -> None:
    if hasattr(client, "ping"):
        client.ping()
    else:
        client.execute("SELECT 1")  # type: ignore[attr-defined]


def test_backend_postgres_sees_each_connection_s_user(backend_class: type[TestBackend]) -> None:
    backend = backend_class()
    assert isinstance(backend, PostgresServer)
    try:
        backend.start()
        import psycopg

        user = backend.add_user("seen")
        dsn = backend.dsn(user.username, user.password)
        with (
            psycopg.connect(dsn, application_name="probe-app"),
            psycopg.connect(dsn, application_name="probe-app"),
        ):
            assert backend.connections("probe-app") == ["seen", "seen"]
    finally:
        backend.stop()


def test_backend_clickhouse_users_rotate_expire_and_are_seen(
    backend_class: type[TestBackend],
) -> None:
    """HTTP authenticates every request: a user's next request after the server reloaded
    users.xml meets the change; the query log names the user of each client connection."""
    import urllib.request

    backend = backend_class()
    assert isinstance(backend, ClickHouseServer)
    try:
        backend.start()
        user = backend.add_user("seen")
        assert backend.query("SELECT 1", user) == b"1\n"
        for _ in range(2):  # two connections (urllib opens one per request)
            request = urllib.request.Request(
                f"http://127.0.0.1:{backend.connection['port']}/?query=SELECT+2",
                headers={"User-Agent": "probe-app", "X-ClickHouse-User": "seen"},
            )
            request.add_unredirected_header(
                "X-ClickHouse-Key", user.password
            )  # the 18.16 server's header authentication
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.read() == b"2\n"
        assert backend.connections("probe-app") == ["seen", "seen"]
        new = backend.rotate_credentials("seen")
        with pytest.raises(BackendFailed, match="Wrong password"):
            backend.query("SELECT 1", user)
        assert backend.query("SELECT 1", new) == b"1\n"
        backend.expire_credentials("seen")
        with pytest.raises(BackendFailed, match="Unknown user"):
            backend.query("SELECT 1", new)
        assert backend.query("SELECT 1", Credentials("prism", backend.credentials.password))
    finally:
        backend.stop()


def test_backend_seaweedfs_access_keys_rotate_and_expire(backend_class: type[TestBackend]) -> None:
    backend = backend_class()
    assert isinstance(backend, SeaweedServer)
    try:
        backend.start()
        user = backend.add_user("rotating")
        path = f"/{backend.BUCKET}/k"
        backend.s3("PUT", path, b"v", credentials=user)
        new = backend.rotate_credentials(user.username)  # by key id, as the suites hold it
        assert new.username != user.username
        with pytest.raises(Exception, match=r"InvalidAccessKeyId|SignatureDoesNotMatch|403"):
            backend.s3("GET", path, credentials=user)
        assert backend.s3("GET", path, credentials=new).content == b"v"
        backend.expire_credentials("rotating")
        with pytest.raises(Exception, match=r"InvalidAccessKeyId|SignatureDoesNotMatch|403"):
            backend.s3("GET", path, credentials=new)
        assert new.password not in repr(new)
    finally:
        backend.stop()


test_backend_seaweedfs_access_keys_rotate_and_expire.kinds = ("seaweedfs",)  # type: ignore[attr-defined]
test_backend_credentials_rotate_and_expire.kinds = ("redis", "postgres", "nats")  # type: ignore[attr-defined]
test_backend_postgres_sees_each_connection_s_user.kinds = ("postgres",)  # type: ignore[attr-defined]
test_backend_clickhouse_users_rotate_expire_and_are_seen.kinds = ("clickhouse",)  # type: ignore[attr-defined]
