"""The proxy tests that go through a real plugin host share its test kit (``host_testkit``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hosting"))


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Trio's mock clock at real speed: time passes as it does, and a test jumps it ahead
    (``clock.jump``) to reach a refresh or a log window at once."""
    mock_clock.rate = 1.0
    return mock_clock
