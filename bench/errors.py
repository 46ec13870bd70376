"""The one exception the harness raises for a failed benchmark (printed without a traceback)."""

from __future__ import annotations


class BenchError(Exception):
    pass
