"""Fixtures of the client tests (see ``client_testkit``): ``proxy`` and ``client`` (namespaces
``kv``, ``probe`` and ``db``), ``memory_client`` (no ``db``: for the autojump clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from client_testkit import config, serving

import prism
import prism.client


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[prism.RunningProxy]:
    async with serving(config(tmp_path)) as running:
        yield running


@pytest.fixture
async def client(proxy: prism.RunningProxy) -> AsyncIterator[prism.client.Client]:
    async with prism.client.connect(proxy.address) as connected:
        yield connected


@pytest.fixture
async def memory_client() -> AsyncIterator[prism.client.Client]:
    async with serving(config(None)) as running, prism.client.connect(running.address) as connected:
        yield connected
