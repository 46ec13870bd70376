"""What every suite reports: medians, ratios, markdown tables, the environment, results files."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.procs import ROOT

DEFAULT_RESULTS_DIR = ROOT / "bench" / "results"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _package_versions(names: Iterable[str]) -> dict[str, str]:
    versions = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError):
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, check=False,
            ).stdout.strip()  # fmt: skip
            return proc.stdout.strip() + ("+dirty" if dirty else "")
    return None


def environment(packages: Iterable[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, "-m", "bench", *sys.argv[1:]],
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "packages": _package_versions(packages),
        **(extra or {}),
    }


def timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def write_results(results_dir: Path, stem: str, data: dict[str, Any], markdown: str) -> Path:
    """`<stem>.json` (everything) and `<stem>.md` (the tables) in `results_dir`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{stem}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown + "\n")
    return path


def publish(
    results_dir: Path,
    stem: str,
    packages: Iterable[str],
    extra: dict[str, Any],
    summary: Any,
    data: dict[str, Any],
    markdown: str,
) -> Path:
    """Print ``markdown`` and write it with the environment, ``summary`` and ``data`` (the
    ``backends-*`` suites' ending)."""
    print(markdown)
    env = environment(packages, extra)
    return write_results(
        results_dir, stem, {"environment": env, "summary": summary, **data}, markdown
    )
