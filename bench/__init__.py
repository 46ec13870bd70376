"""Prism's benchmark harness: `python -m bench [SUITE] [options]` (see docs/benchmarks.md).

Benchmarks are never timed unit tests: each suite starts the competitors as separate processes,
drives them side by side in one run with an external load generator, and reports medians,
CPU microseconds per request and ratios. Suites live in `bench.suites` (a registry), servers
under `bench/servers/`, the shared echo service in `bench/protos/echo.proto`.
"""
