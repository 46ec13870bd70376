"""grpcio's generated stubs against a real ``prism serve``: the client API's protos
(``protos/prism/proxy/v1`` and the data model in ``protos/prism/data/v1``) compiled here with
``grpc_tools.protoc`` into a temporary directory, as any grpcio user would, then ``Execute``
and ``ExecuteStream`` with typed params packed in ``google.protobuf.Any``.

The protos are copied under a package ``prismapi`` so that the generated modules
(``prismapi.proxy.v1.proxy_pb2``) do not collide with the installed ``prism`` package; the
protobuf packages, and so the message names and type URLs, are the repository's.
"""

from __future__ import annotations

import importlib
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import grpc
import pytest
from prism_serve import REPO, prism_serve

PROTOS = [
    "proxy/v1/proxy.proto",
    "data/v1/keyvalue.proto",
    "data/v1/pubsub.proto",
    "data/v1/sql.proto",
]


def generate(out: Path) -> SimpleNamespace:
    """Compile the protos with grpc_tools.protoc into ``out`` and import the modules."""
    source = out / "src"
    for proto in PROTOS:
        target = source / "prismapi" / proto
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "protos" / "prism" / proto, target)
    well_known = resources.files("grpc_tools") / "_proto"
    generated = out / "generated"
    generated.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{source}",
            f"-I{well_known}",
            f"--python_out={generated}",
            f"--grpc_python_out={generated}",
            *(f"prismapi/{proto}" for proto in PROTOS),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    sys.path.insert(0, str(generated))
    try:

        def load(name: str) -> ModuleType:
            return importlib.import_module(f"prismapi.{name}")

        return SimpleNamespace(
            proxy=load("proxy.v1.proxy_pb2"),
            grpc=load("proxy.v1.proxy_pb2_grpc"),
            kv=load("data.v1.keyvalue_pb2"),
            pubsub=load("data.v1.pubsub_pb2"),
            sql=load("data.v1.sql_pb2"),
        )
    finally:
        sys.path.remove(str(generated))


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return generate(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, stubs: SimpleNamespace) -> Iterator[Any]:
    """A stub of ``prism serve`` (namespaces ``kv``: memstore, ``durable``: SQLite)."""
    with (
        prism_serve(tmp_path_factory.mktemp("serve")) as target,
        grpc.insecure_channel(target) as channel,
    ):
        yield stubs.grpc.DataProxyStub(channel)


def execute(stubs: SimpleNamespace, proxy: Any, ns: str, operation: str, params: Any) -> Any:
    request = stubs.proxy.ExecuteRequest(namespace=ns, operation=operation)
    request.typed_params.Pack(params)
    return proxy.Execute(request, timeout=30)


def unpacked(response: Any, cls: Any) -> Any:
    result = cls()
    assert response.WhichOneof("result") == "typed_result"
    assert response.typed_result.Unpack(result), response.typed_result.type_url
    return result


def test_grpcio_stubs_set_and_get_with_typed_params(stubs: SimpleNamespace, proxy: Any) -> None:
    kv = stubs.kv
    written = unpacked(
        execute(stubs, proxy, "kv", "set", kv.SetRequest(key="k", value=b"v", ttl_ms=60_000)),
        kv.SetResponse,
    )
    assert written.etag
    read = unpacked(execute(stubs, proxy, "kv", "get", kv.GetRequest(key="k")), kv.GetResponse)
    assert (read.found, read.value, read.etag) == (True, b"v", written.etag)
    assert read.HasField("ttl_remaining_ms")
    assert 0 < read.ttl_remaining_ms <= 60_000

    many = kv.GetManyRequest(keys=["k", "missing"])
    items = unpacked(execute(stubs, proxy, "kv", "get_many", many), kv.GetManyResponse).items
    assert [(i.found, i.value) for i in items] == [(True, b"v"), (False, b"")]


def test_grpcio_stubs_statuses(stubs: SimpleNamespace, proxy: Any) -> None:
    kv = stubs.kv
    with pytest.raises(grpc.RpcError) as info:
        execute(stubs, proxy, "nowhere", "get", kv.GetRequest(key="k"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    execute(stubs, proxy, "kv", "set", kv.SetRequest(key="c", value=b"1"))
    with pytest.raises(grpc.RpcError) as info:
        execute(stubs, proxy, "kv", "set", kv.SetRequest(key="c", value=b"2", if_match="stale"))
    assert info.value.code() is grpc.StatusCode.ABORTED
    with pytest.raises(grpc.RpcError) as info:
        execute(stubs, proxy, "kv", "get", kv.SetRequest(key="c"))  # the wrong params type
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_grpcio_stubs_raw_params_and_request_metadata(stubs: SimpleNamespace, proxy: Any) -> None:
    request = stubs.proxy.ExecuteRequest(
        namespace="kv", operation="set_raw", raw_params=b"\x00\x01", metadata={"key": "blob"}
    )
    proxy.Execute(request, timeout=30)
    request = stubs.proxy.ExecuteRequest(
        namespace="kv", operation="get_raw", raw_params=b"", metadata={"key": "blob"}
    )
    response = proxy.Execute(request, timeout=30)
    assert response.WhichOneof("result") == "raw_result"
    assert response.raw_result == b"\x00\x01"


def test_grpcio_stubs_sql_typed_values(stubs: SimpleNamespace, proxy: Any) -> None:
    sql = stubs.sql
    create = sql.ExecuteStatementRequest(sql="CREATE TABLE t (id INTEGER, name TEXT)")
    execute(stubs, proxy, "durable", "execute", create)
    insert = sql.ExecuteStatementRequest(
        sql="INSERT INTO t VALUES ($1, $2)",
        params=[sql.Value(int64_value=7), sql.Value(string_value="seven")],
    )
    done = unpacked(
        execute(stubs, proxy, "durable", "execute", insert), sql.ExecuteStatementResponse
    )
    assert done.rows_affected == 1
    query = sql.QueryRequest(sql="SELECT id, name FROM t WHERE id = $1", params=[insert.params[0]])
    rows = unpacked(execute(stubs, proxy, "durable", "query", query), sql.QueryResponse)
    assert [c.name for c in rows.columns] == ["id", "name"]
    assert [(r.values[0].int64_value, r.values[1].string_value) for r in rows.rows] == [
        (7, "seven")
    ]


def test_grpcio_stubs_execute_stream_subscribe(stubs: SimpleNamespace, proxy: Any) -> None:
    """A subscription over ExecuteStream: messages published after it started arrive in order;
    cancelling the call makes memstore drop the subscriber (publish is numbered 0 again)."""
    ps = stubs.pubsub
    first = stubs.proxy.StreamRequest(namespace="kv", operation="subscribe")
    first.typed_params.Pack(ps.SubscribeRequest(topic="grpcio"))
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield first
        done.wait()  # keep the request side open: the subscription lasts until cancelled

    call = proxy.ExecuteStream(requests(), timeout=60)
    received: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for response in call:
                received.put(response)
        except grpc.RpcError as exc:
            received.put(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def publish(payload: bytes) -> int:
        request = ps.PublishRequest(topic="grpcio", payload=payload, headers={"via": "grpcio"})
        result = unpacked(execute(stubs, proxy, "kv", "publish", request), ps.PublishResponse)
        return int(result.sequence)

    try:
        deadline = time.monotonic() + 30
        while publish(b"warm-up") == 0:  # nobody subscribed yet
            assert time.monotonic() < deadline, "the subscription never started"
            time.sleep(0.02)
        sequences = [publish(b"m%d" % i) for i in range(3)]
        messages = []
        while len(messages) < 3:
            response = received.get(timeout=30)
            assert not isinstance(response, grpc.RpcError), response
            message = unpacked(response, ps.Message)
            if message.payload != b"warm-up":
                messages.append(message)
        assert [(m.topic, m.payload, dict(m.headers)) for m in messages] == [
            ("grpcio", b"m%d" % i, {"via": "grpcio"}) for i in range(3)
        ]
        assert [m.sequence for m in messages] == sequences
    finally:
        call.cancel()
        done.set()
        reader.join(30)
    deadline = time.monotonic() + 30
    while publish(b"anyone?") != 0:
        assert time.monotonic() < deadline, "memstore kept the cancelled subscriber"
        time.sleep(0.02)
