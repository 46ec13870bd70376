"""The registry of benchmark suites: `python -m bench SUITE [options]`.

A suite is an object with a `name`, a one-line `summary`, `add_arguments(parser)` for its own
options (the common ones, `--repeat`, `--quick` and `--results-dir`, are already there) and
`run(args) -> exit code`. To add one, write `bench/suites/<module>.py` that calls
`register(...)` at import time and list the module in `SUITE_MODULES`. Shared pieces:
`bench.procs` (server processes, their CPU time), `bench.h2load` (load generation),
`bench.report` (medians, tables, the results file). Suites: `grpc` (grpc_stack.py), `plugins`
(plugins.py), `pubsub` (pubsub.py), `wire` (wire.py), `protobuf` (protobuf.py), `abuse`
(abuse.py), `proxy` (proxy.py: the whole proxy, stage by stage), `tracing` (tracing.py),
`backends` (backends/: one module per backend), `backends-postgres` (bench/backends/postgres.py:
PostgreSQL, with the driver comparison), `backends-clickhouse` (bench/backends/clickhouse.py:
ClickHouse query and batched insert), `traffic` (traffic.py: a bystander under a flood, with
and without a namespace's concurrency cap), `fleet-limits` (fleetlimit.py: a fleet rate limit's
cost per request beside a local one), `fleet-config` (fleet_config.py: a config change from an
etcd PUT to serving on three proxies), `backends-log` (bench/backends/log.py: Kafka and NATS
JetStream produce/consume), `zerocopy` (zerocopy.py: 1 GiB of raw chunks through the
proxy and a sidecar: MiB/s and peak RSS).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Protocol

#: Modules that register suites when imported; the first suite registered is not the default,
#: DEFAULT_SUITE is.
SUITE_MODULES = (
    "bench.suites.grpc_stack",
    "bench.suites.plugins",
    "bench.suites.pubsub",
    "bench.suites.wire",
    "bench.suites.protobuf",
    "bench.suites.abuse",
    "bench.suites.proxy",
    "bench.suites.backends",
    "bench.backends.postgres",
    "bench.backends.clickhouse",
    "bench.backends.objects",
    "bench.backends.log",
    "bench.suites.traffic",
    "bench.suites.tracing",
    "bench.suites.fleetlimit",
    "bench.suites.fleet_config",
    "bench.suites.zerocopy",
)
DEFAULT_SUITE = "grpc"


class Suite(Protocol):
    name: str
    summary: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    if suite.name in SUITES:
        raise ValueError(f"benchmark suite {suite.name!r} registered twice")
    SUITES[suite.name] = suite
    return suite


def load_suites() -> dict[str, Suite]:
    for module in SUITE_MODULES:
        importlib.import_module(module)
    return SUITES
