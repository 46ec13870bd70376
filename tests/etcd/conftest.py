from __future__ import annotations

from collections.abc import Iterator

import pytest
from etcd_server import EtcdServer, etcd_server


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server
