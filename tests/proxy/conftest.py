"""The proxy tests that go through a real plugin host share its test kit (``host_testkit``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hosting"))
