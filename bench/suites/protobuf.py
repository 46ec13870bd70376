"""`protobuf` suite: what strict decoding costs per message, beside the decoders themselves.

For a few small messages of the kind every call carries (a plugin's params, the Execute
envelope, a health check, a config document), in-process and warm: µs per message of
`prism.grpc.protocheck.check` (the strictness walk that runs before every betterproto2 parse),
of betterproto2's own `parse`, and of upb's `FromString` (the `protobuf` package, from the
descriptor set, when it is installed), median over rounds, in one run. It needs nothing but the
project (and `protobuf` for the last column).
"""

from __future__ import annotations

import argparse
import importlib.resources
import statistics
import time
from collections.abc import Callable
from typing import Any

import betterproto2

from bench import report
from bench.suites import register
from prism._proto.google.protobuf import Any as AnyMessage
from prism._proto.google.protobuf import Struct
from prism._proto.grpc.health.v1 import HealthCheckRequest
from prism._proto.prism.config.v1 import ConfigDocument
from prism._proto.prism.data.v1 import GetRequest, SetRequest
from prism._proto.prism.plugin.v1 import ExecuteRequest
from prism.grpc import protocheck

PACKAGES = ("betterproto2", "protobuf")
COLUMNS = ("protocheck.check", "betterproto2 parse", "upb FromString")


def _messages() -> list[tuple[str, type[betterproto2.Message], bytes]]:
    set_request = SetRequest(key="user:1234", value=b"v" * 100, ttl_ms=60_000)
    execute = ExecuteRequest(
        operation="set",
        typed_params=AnyMessage(
            type_url="type.googleapis.com/prism.data.v1.SetRequest", value=bytes(set_request)
        ),
        metadata={"trace": "00-1234"},
    )
    document = ConfigDocument(values=Struct.from_dict({"path": "/data", "limit": 10}))
    return [
        ("GetRequest", GetRequest, bytes(GetRequest(key="user:1234"))),
        ("SetRequest", SetRequest, bytes(set_request)),
        ("HealthCheckRequest", HealthCheckRequest, bytes(HealthCheckRequest(service="kv"))),
        ("plugin ExecuteRequest", ExecuteRequest, bytes(execute)),
        ("ConfigDocument", ConfigDocument, bytes(document)),
    ]


def _upb_parsers() -> dict[str, Callable[[bytes], Any]] | None:
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        return None
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (importlib.resources.files("prism._proto") / "descriptors.binpb").read_bytes()
    )
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)

    def parser(name: str) -> Callable[[bytes], Any]:
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        return cls.FromString  # type: ignore[no-any-return]

    names = {
        "GetRequest": "prism.data.v1.GetRequest",
        "SetRequest": "prism.data.v1.SetRequest",
        "HealthCheckRequest": "grpc.health.v1.HealthCheckRequest",
        "plugin ExecuteRequest": "prism.plugin.v1.ExecuteRequest",
        "ConfigDocument": "prism.config.v1.ConfigDocument",
    }
    return {label: parser(name) for label, name in names.items()}


def _per_call_us(func: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        func()
    return (time.perf_counter_ns() - start) / calls / 1000


class ProtobufSuite:
    name = "protobuf"
    summary = "strict decoding (protocheck) vs betterproto2 and upb parse, µs per small message"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--calls", type=int, help="calls per message per round (default 20000, --quick 2000)"
        )

    def run(self, args: argparse.Namespace) -> int:
        calls: int = args.calls or (2000 if args.quick else 20000)
        repeat: int = args.repeat or (1 if args.quick else 5)
        upb = _upb_parsers()
        rows, data_rows = [], {}
        for label, cls, data in _messages():
            funcs: list[Callable[[], object] | None] = [
                lambda cls=cls, data=data: protocheck.check(cls, data),
                lambda cls=cls, data=data: cls.parse(data),
                (lambda p=upb[label], data=data: p(data)) if upb else None,
            ]
            medians: list[float | None] = []
            for func in funcs:
                if func is None:
                    medians.append(None)
                    continue
                func()  # warm: schemas and class metadata are built on first use
                medians.append(statistics.median(_per_call_us(func, calls) for _ in range(repeat)))
            check, parse = medians[0], medians[1]
            assert check is not None
            assert parse is not None
            rows.append(
                [
                    label,
                    str(len(data)),
                    *("—" if m is None else f"{m:.2f}" for m in medians),
                    f"{check / parse:.0%}",
                ]
            )
            data_rows[label] = dict(zip(COLUMNS, medians, strict=True))
        title = f"### protobuf: µs per message, {calls} calls per round, median of {repeat}" + (
            "" if upb else " (protobuf not installed: no upb column)"
        )
        table = report.markdown_table(["message", "bytes", *COLUMNS, "check / betterproto2"], rows)
        markdown = f"{title}\n\n{table}"
        print(markdown)
        results: dict[str, Any] = {
            "suite": self.name,
            "environment": report.environment(PACKAGES, {"calls": calls, "repeat": repeat}),
            "messages": data_rows,
        }
        report.write_results(args.results_dir, f"protobuf-{report.timestamp()}", results, markdown)
        return 0


register(ProtobufSuite())
