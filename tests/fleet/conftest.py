"""The fleet tests run against a real etcd (one per module, torn down even when a test fails)
and go through a real plugin host (``host_testkit``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hosting"))

from etcd_server import EtcdServer, etcd_server


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server
